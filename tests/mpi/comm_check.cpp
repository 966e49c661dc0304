// unet_comm_check: the data-parallel building blocks under real MPI processes. ctest runs it as
// `mpirun --oversubscribe -np 2` and `-np 3` (CMakeLists.txt). Every rank runs every case; each rank can make every
// other rank's inputs (they come from seeds), so each checks its result against a serial computation in rank order.
// Checks never change the control flow, so the ranks' collectives stay in step even when one fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/data_parallel.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/random.h"

using namespace unet;

namespace {

std::vector<float> rank_values(int rank, int64_t n, uint64_t salt) {
  Rng rng(salt * 7919 + static_cast<uint64_t>(rank));
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

bool same_bits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("allreduce sums f32 in rank order, bit for bit, for sizes below, at and above the rank count") {
  Comm& c = world();
  REQUIRE(c.size() > 1);
  for (int64_t n : {int64_t(1), int64_t(2), int64_t(3), int64_t(7), int64_t(1000), int64_t(300001)}) {
    std::vector<float> mine = rank_values(c.rank(), n, static_cast<uint64_t>(n));
    std::vector<float> expected = rank_values(0, n, static_cast<uint64_t>(n));
    for (int r = 1; r < c.size(); ++r) {
      std::vector<float> x = rank_values(r, n, static_cast<uint64_t>(n));
      for (size_t k = 0; k < x.size(); ++k) expected[k] += x[k];
    }
    c.allreduce(mine.data(), n, ScalarType::f32, ReduceOp::sum, Device::cpu);
    CHECK_MESSAGE(same_bits(mine.data(), expected.data(), expected.size()), "n = " << n);
  }
}

TEST_CASE("allreduce in pieces: more values than one MPI call takes (2^26 + 5 floats)") {
  Comm& c = world();
  const int64_t n = (int64_t(1) << 26) + 5;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[static_cast<size_t>(k)] = static_cast<float>((k % 1000) * (c.rank() + 1));
  c.allreduce(v.data(), n, ScalarType::f32, ReduceOp::sum, Device::cpu);
  const float ranks_sum = static_cast<float>(c.size() * (c.size() + 1) / 2);
  int64_t wrong = 0;
  for (int64_t k = 0; k < n; ++k) wrong += v[static_cast<size_t>(k)] != static_cast<float>(k % 1000) * ranks_sum;
  CHECK(wrong == 0);
}

TEST_CASE("allreduce: f64 and i64 sums, i64 and f32 maxima, NaN reaching every rank") {
  Comm& c = world();
  std::vector<double> d = {0.1 * (c.rank() + 1), -1e300, 3.0};
  c.allreduce(d.data(), 3, ScalarType::f64, ReduceOp::sum, Device::cpu);
  double s = 0.1;
  for (int r = 1; r < c.size(); ++r) s += 0.1 * (r + 1);
  CHECK(d[0] == s);
  CHECK(d[2] == 3.0 * c.size());
  std::vector<int64_t> i = {-1, -1, c.rank() == 1 ? 42 : -1, c.rank()};
  c.allreduce(i.data(), 4, ScalarType::i64, ReduceOp::max, Device::cpu);
  CHECK(i == std::vector<int64_t>{-1, -1, 42, c.size() - 1});
  std::vector<float> f = {static_cast<float>(c.rank()), c.rank() == c.size() - 1 ? std::nanf("") : 1.0f};
  c.allreduce(f.data(), 2, ScalarType::f32, ReduceOp::max, Device::cpu);
  CHECK(f[0] == static_cast<float>(c.size() - 1));
  CHECK(std::isnan(f[1]));
  std::vector<float> g = {1.0f, c.rank() == 0 ? std::numeric_limits<float>::infinity() : 2.0f};
  if (c.rank() == 1) g[1] = -std::numeric_limits<float>::infinity();
  c.allreduce(g.data(), 2, ScalarType::f32, ReduceOp::sum, Device::cpu);
  CHECK(g[0] == static_cast<float>(c.size()));
  CHECK(std::isnan(g[1]));  // inf + -inf: a skipped step on every rank
  CHECK(c.sum(static_cast<int64_t>(c.rank())) == c.size() * (c.size() - 1) / 2);
  CHECK(c.any(c.rank() == 1));
  CHECK_FALSE(c.any(false));
  int64_t b = c.rank() == 1 ? 1234567 : 0;
  c.broadcast(&b, sizeof b, 1);
  CHECK(b == 1234567);
}

namespace {

// Parameters of several sizes (one bigger than a bucket), and the gradients rank r's backward gives them:
// loss_r = sum_k c_rk * sum(leaky_relu(p_k, 0.25)), so d/dp_k = c_rk * (p > 0 ? 1 : 0.25), computed by the kernels.
struct Model {
  std::vector<Tensor> params;
  Tensor unused;  // a parameter no loss reaches: it keeps no gradient
  explicit Model(Device d) {
    Rng rng(3);
    for (int64_t n : {5, 1000, 3000, 1, 17, 4096}) params.push_back(randn({n}, rng).to(d).set_requires_grad(true));
    unused = randn({8}, rng).to(d).set_requires_grad(true);
  }
  std::vector<Tensor> all() const {
    std::vector<Tensor> v = params;
    v.insert(v.begin() + 2, unused);
    return v;
  }
  void backward_as(int rank) {
    for (const Tensor& p : all()) Tensor(p).set_grad(Tensor());
    for (size_t k = 0; k < params.size(); ++k) {  // one backward per parameter (sum has no CUDA kernel)
      const Tensor& p = params[k];
      Tensor l = ops::scale(ops::leaky_relu(p, 0.25f), 0.5f + static_cast<float>(rank * 7 + k) / 3);
      autograd::backward(
          l, Tensor::from_vector(p.shape(), std::vector<float>(static_cast<size_t>(p.numel()), 1.0f)).to(p.device()));
    }
  }
};

void check_reducer(Device d) {
  Comm& c = world();
  Model m(d);
  // The serial reference: every rank's gradients, added in rank order.
  std::vector<std::vector<float>> expected(m.params.size());
  for (int r = 0; r < c.size(); ++r) {
    m.backward_as(r);
    for (size_t k = 0; k < m.params.size(); ++k) {
      std::vector<float> g = m.params[k].grad().to_vector();
      if (r == 0) {
        expected[k] = g;
      } else {
        for (size_t e = 0; e < g.size(); ++e) expected[k][e] += g[e];
      }
    }
  }
  for (bool overlap : {true, false}) {
    GradientReducer reducer(m.all(), c, /*bucket_bytes=*/8192, overlap);
    CHECK(reducer.buckets() >= 3);
    for (int step = 0; step < 2; ++step) {  // twice: the buckets are reset between steps
      m.backward_as(c.rank());
      reducer.finish();
      for (size_t k = 0; k < m.params.size(); ++k) {
        std::vector<float> g = m.params[k].grad().to_vector();
        CHECK_MESSAGE(same_bits(g.data(), expected[k].data(), g.size()),
                      "parameter " << k << ", overlap " << overlap << ", step " << step);
      }
      CHECK_FALSE(m.unused.grad().defined());
      CHECK(reducer.last_times().bytes == (5 + 1000 + 3000 + 1 + 17 + 4096 + 8) * 4);
    }
  }
}

}  // namespace

TEST_CASE("GradientReducer sums every rank's gradients in rank order, overlapped with backward or not") {
  check_reducer(Device::cpu);
}

TEST_CASE("GradientReducer on device memory (the emulator): buckets on the device, staged through the host") {
  if (!device::emulator_built()) return;  // the GPU build: no emulator
  check_reducer(Device::cuda_emu);
}

namespace {
void check_loss_share(const ops::DiceCeForm& form) {
  Comm& c = world();
  const int64_t B = c.size(), C = 3;
  const Shape shape{B, 4, 5, 3, C};
  Rng rng(11);
  Tensor logits = randn(shape, rng);
  std::vector<float> labels(static_cast<size_t>(B * 4 * 5 * 3));
  for (float& l : labels) l = static_cast<float>(rng.below(C));
  Tensor y = Tensor::from_vector({B, 4, 5, 3}, labels, DType::i32);

  // One process, the whole batch.
  Tensor full = logits.clone().set_requires_grad(true);
  Tensor parts_full;
  Tensor loss_full = ops::dice_ce_loss(full, y, &parts_full, nullptr, form);
  autograd::backward(loss_full);

  // This rank's sample only, the statistics reduced over the ranks.
  const int64_t per = 4 * 5 * 3;
  std::vector<float> all = logits.to_vector(), all_labels = labels;
  std::vector<float> mine(all.begin() + c.rank() * per * C, all.begin() + (c.rank() + 1) * per * C);
  std::vector<float> my_labels(all_labels.begin() + c.rank() * per, all_labels.begin() + (c.rank() + 1) * per);
  Tensor part = Tensor::from_vector({1, 4, 5, 3, C}, mine).set_requires_grad(true);
  Tensor parts;
  Tensor loss = ops::dice_ce_loss(part, Tensor::from_vector({1, 4, 5, 3}, my_labels, DType::i32), &parts, &c, form);
  autograd::backward(loss);

  CHECK(loss.to_vector()[0] == doctest::Approx(loss_full.to_vector()[0]).epsilon(1e-6));
  CHECK(parts.to_vector()[0] == doctest::Approx(parts_full.to_vector()[0]).epsilon(1e-6));
  CHECK(parts.to_vector()[1] == doctest::Approx(parts_full.to_vector()[1]).epsilon(1e-6));
  const std::vector<float> g = part.grad().to_vector(), g_full = full.grad().to_vector();
  double worst = 0, scale = 0;
  for (int64_t k = 0; k < per * C; ++k) {
    scale = std::max(scale, std::abs(static_cast<double>(g_full[static_cast<size_t>(c.rank() * per * C + k)])));
    worst = std::max(worst, std::abs(static_cast<double>(g[static_cast<size_t>(k)]) -
                                     g_full[static_cast<size_t>(c.rank() * per * C + k)]));
  }
  CHECK(worst <= 1e-6 * scale);
}
}  // namespace

TEST_CASE("dice_ce_loss with a comm: each rank's share gives the global batch's loss and its share of the gradient") {
  check_loss_share({});
}

TEST_CASE("dice_ce_loss in DLE's per-sample form with a comm: the global batch's loss, this rank's gradient share") {
  check_loss_share(ops::kDleDiceCe);
}

TEST_CASE("hybrid_loss with a comm: each rank's sample gives the global batch's loss and its share of the gradient") {
  Comm& c = world();
  const int64_t B = c.size(), H = 12, W = 13, C = 3, per = H * W;
  Rng rng(12);
  Tensor logits = randn({B, H, W, C}, rng, 2.f);
  std::vector<float> labels(static_cast<size_t>(B * per));
  for (float& l : labels) l = static_cast<float>(rng.below(C));
  Tensor full = logits.clone().set_requires_grad(true);
  Tensor parts_full;
  const Tensor loss_full =
      ops::hybrid_loss(full, Tensor::from_vector({B, H, W}, labels, DType::i32), &parts_full, nullptr);
  autograd::backward(loss_full);

  const std::vector<float> all = logits.to_vector();
  const std::vector<float> mine(all.begin() + c.rank() * per * C, all.begin() + (c.rank() + 1) * per * C);
  const std::vector<float> my_labels(labels.begin() + c.rank() * per, labels.begin() + (c.rank() + 1) * per);
  Tensor part = Tensor::from_vector({1, H, W, C}, mine).set_requires_grad(true);
  Tensor parts;
  const Tensor loss = ops::hybrid_loss(part, Tensor::from_vector({1, H, W}, my_labels, DType::i32), &parts, &c);
  autograd::backward(loss);
  CHECK(loss.to_vector()[0] == doctest::Approx(loss_full.to_vector()[0]).epsilon(1e-6));
  for (int i = 0; i < 3; ++i)
    CHECK(parts.to_vector()[size_t(i)] == doctest::Approx(parts_full.to_vector()[size_t(i)]).epsilon(1e-6));
  const std::vector<float> g = part.grad().to_vector(), g_full = full.grad().to_vector();
  double worst = 0, scale = 0;
  for (int64_t k = 0; k < per * C; ++k) {
    const double e = g_full[static_cast<size_t>(c.rank() * per * C + k)];
    scale = std::max(scale, std::abs(e));
    worst = std::max(worst, std::abs(double(g[static_cast<size_t>(k)]) - e));
  }
  CHECK(worst <= 1e-6 * scale);
}

TEST_CASE("presence_bce_loss with a comm: each rank's sample gives the global batch's loss and its gradient share") {
  Comm& c = world();
  const int64_t B = c.size(), per = 20;
  Rng rng(13);
  const Tensor z = randn({B, 2}, rng, 2.f);
  std::vector<float> labels(static_cast<size_t>(B * per), 0.f);
  for (int64_t b = 0; b < B; b += 2) labels[size_t(b * per + 7)] = 1;  // every other sample holds the organ
  Tensor full = z.clone().set_requires_grad(true);
  const Tensor loss_full = ops::presence_bce_loss(full, Tensor::from_vector({B, per}, labels, DType::u8));
  autograd::backward(loss_full);
  const std::vector<float> all = z.to_vector(), g_full = full.grad().to_vector();
  Tensor part = Tensor::from_vector({1, 2}, {all[size_t(c.rank() * 2)], all[size_t(c.rank() * 2 + 1)]});
  part.set_requires_grad(true);
  const std::vector<float> mine(labels.begin() + c.rank() * per, labels.begin() + (c.rank() + 1) * per);
  const Tensor loss = ops::presence_bce_loss(part, Tensor::from_vector({1, per}, mine, DType::u8), &c);
  autograd::backward(loss);
  CHECK(loss.to_vector()[0] == doctest::Approx(loss_full.to_vector()[0]).epsilon(1e-6));
  for (int k = 0; k < 2; ++k)
    CHECK(part.grad().to_vector()[size_t(k)] == doctest::Approx(g_full[size_t(c.rank() * 2 + k)]).epsilon(1e-6));
}

namespace {
// Every element of a within rtol |b| + atol of b's.
void check_near(const Tensor& a, const Tensor& b, double rtol, double atol, const char* what) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::abs(double(x[i]) - y[i]) / (rtol * std::abs(double(y[i])) + atol));
  CHECK_MESSAGE(worst <= 1.0, what << ": error " << worst << " times the tolerance");
}

// SyncBatchNorm over the ranks (each holding one sample of the global batch) against one process's batch norm of the
// whole batch: output, running statistics, d x, and d gamma / d beta summed over the ranks.
void check_sync_batch_norm(Device d, DType dt, bool relu) {
  Comm& c = world();
  const int64_t B = c.size(), H = 5, W = 6, C = 4, per = H * W * C;
  Rng rng(31);
  const Tensor x = randn({B, H, W, C}, rng, 2.f), r = randn({B, H, W, C}, rng);
  const Tensor gamma0 = randn({C}, rng), beta0 = randn({C}, rng);
  ops::BatchNormOptions o;
  o.relu = relu;
  o.momentum = 0.3f;
  o.eps = 1e-3f;
  auto run = [&](const Tensor& xs, const Tensor& rs, Comm* comm) {
    Tensor xin = ops::cast(xs.to(d), dt).set_requires_grad(true);
    Tensor g = gamma0.clone().to(d).set_requires_grad(true), b = beta0.clone().to(d).set_requires_grad(true);
    Tensor rm = Tensor::zeros({C}).to(d), rv = Tensor::full({C}, 1.f).to(d);
    ops::BatchNormOptions oo = o;
    oo.comm = comm;
    const Tensor y = ops::cast(ops::batch_norm(xin, g, b, rm, rv, oo), DType::f32);
    autograd::backward(y, rs.to(d));
    return std::vector<Tensor>{y, ops::cast(xin.grad(), DType::f32), g.grad(), b.grad(), rm, rv};
  };
  const std::vector<Tensor> full = run(x, r, nullptr);
  auto mine = [&](const Tensor& t) {
    const std::vector<float> v = t.to_vector();
    return Tensor::from_vector({1, H, W, C},
                               std::vector<float>(v.begin() + c.rank() * per, v.begin() + (c.rank() + 1) * per));
  };
  const std::vector<Tensor> part = run(mine(x), mine(r), &c);
  // f32: the sums in double on both paths, rounded differently; f16 / bf16: a few units in their last place.
  const double tol = dt == DType::f32 ? 1e-5 : dt == DType::f16 ? 4e-3 : 3e-2;
  check_near(part[0], mine(full[0]), tol, tol, "y");
  check_near(part[1], mine(full[1]), tol, tol, "dx");
  for (int i = 2; i < 4; ++i) {  // this rank's share of d gamma / d beta, summed over the ranks
    Tensor sum = part[size_t(i)].to(Device::cpu).clone();
    c.allreduce(sum.raw(), C, ScalarType::f32, ReduceOp::sum, Device::cpu);
    check_near(sum, full[size_t(i)], tol, tol, i == 2 ? "dgamma" : "dbeta");
  }
  check_near(part[4], full[4], 1e-5, 1e-6, "running_mean");
  check_near(part[5], full[5], 1e-5, 1e-6, "running_var");
}
}  // namespace

TEST_CASE("batch_norm with a comm (SyncBatchNorm): every rank's sample normalised as one batch, the gradient shared") {
  for (bool relu : {false, true})
    for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
      CAPTURE(relu);
      CAPTURE(dtype_name(dt));
      check_sync_batch_norm(Device::cpu, dt, relu);
      if (device::emulator_built()) check_sync_batch_norm(Device::cuda_emu, dt, relu);
    }
}

int main(int argc, char** argv) {
  unet::world();  // MPI first: doctest's output then comes from initialised ranks
  doctest::Context context(argc, argv);
  const int failed = context.run();
  // Any rank's failure fails the run (mpirun reports the first non-zero status).
  return failed;
}
