// Learning-rate schedules against their closed forms.
#include <cmath>

#include "engine/schedule.h"
#include "tests/test_util.h"

using unet::LrSchedule;

TEST_CASE("poly decays as (1 - t/T)^0.9 to zero") {
  LrSchedule s{"poly", 1e-2, 100};
  CHECK(s.at(0) == doctest::Approx(1e-2));
  CHECK(s.at(50) == doctest::Approx(1e-2 * std::pow(0.5, 0.9)));
  CHECK(s.at(100) == doctest::Approx(0.0));
}

TEST_CASE("cosine with warm restarts goes from base to eta_min and restarts every period") {
  LrSchedule s{"cosine", 8e-4, 10000, 0, 4096, 8e-5};
  CHECK(s.at(0) == doctest::Approx(8e-4));
  CHECK(s.at(2048) == doctest::Approx((8e-4 + 8e-5) / 2));
  CHECK(s.at(4096) == doctest::Approx(8e-4));  // restart
  CHECK(s.at(4095) == doctest::Approx(8e-5).epsilon(1e-3));
}

TEST_CASE("linear warm-up rises to the base rate, then the schedule starts") {
  LrSchedule s{"none", 1e-3, 100, 4};
  CHECK(s.at(0) == doctest::Approx(2.5e-4));
  CHECK(s.at(3) == doctest::Approx(1e-3));
  CHECK(s.at(50) == doctest::Approx(1e-3));
  CHECK_THROWS_AS((LrSchedule{"step", 1e-3, 10}.at(0)), std::invalid_argument);
}
