// ConvProblem's methods (kernels/conv.h): output size and description, shared by every backend.
#include "kernels/cpu/conv.h"

#include <sstream>

namespace unet::kernels {

void ConvProblem::compute_output_size() {
  Z = (D + 2 * pad_d - T) / stride_d + 1;
  P = (H + 2 * pad_h - R) / stride_h + 1;
  Q = (W + 2 * pad_w - S) / stride_w + 1;
  // Integer division truncates toward zero; a negative numerator must still give an empty output.
  if (D + 2 * pad_d < T) Z = 0;
  if (H + 2 * pad_h < R) P = 0;
  if (W + 2 * pad_w < S) Q = 0;
}

std::string ConvProblem::describe() const {
  std::ostringstream o;
  o << "N=" << N << " in=[" << D << "," << H << "," << W << "] C=" << C << " K=" << K << " kernel=[" << T << "," << R
    << "," << S << "] stride=[" << stride_d << "," << stride_h << "," << stride_w << "] pad=[" << pad_d << "," << pad_h
    << "," << pad_w << "] out=[" << Z << "," << P << "," << Q << "]";
  return o.str();
}

}  // namespace unet::kernels
