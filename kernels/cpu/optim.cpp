// CPU fused optimizer kernels (see kernels/cpu/optim.h).
// All parameters of one step are cut into fixed pieces of at most kPiece elements, and the pieces are spread over the
// threads in one parallel region, so hundreds of small parameters (biases, norm weights) cost one fork, not hundreds.
// The element update is written once as a template over a scalar float and a GNU vector of register width: GCC
// will not vectorize std::sqrt in a plain loop without -fno-math-errno, so the vector path calls the SIMD square root.
// Each check-then-update call reads the gradients twice (once for the inf/nan check, once for the update): a skipped
// step must write nothing, and the check is cheap next to the update's 7 streams.
#include "kernels/cpu/optim.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/common/parallel.h"

namespace unet::kernels::cpu {
namespace {

constexpr int64_t kPiece = 1 << 14;

struct Piece {
  size_t slice;
  int64_t lo, hi;
};

template <class GetN>
std::vector<Piece> make_pieces(size_t count, GetN get_n) {
  std::vector<Piece> pieces;
  for (size_t s = 0; s < count; ++s) {
    int64_t n = get_n(s);
    for (int64_t lo = 0; lo < n; lo += kPiece) pieces.push_back({s, lo, std::min(n, lo + kPiece)});
  }
  return pieces;
}

// ---- scalar / vector element access ----
// One vector is as wide as the target's registers (so no vector is passed in a wider ABI than the build enables).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;
#else
constexpr int64_t kLanes = 4;
#endif
using vf = float __attribute__((vector_size(kLanes * sizeof(float))));

template <class T>
inline T ld(const float* p) {
  if constexpr (std::is_same_v<T, float>) {
    return *p;
  } else {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
}
inline void st(float* p, float v) {
  *p = v;
}
inline void st(float* p, vf v) {
  std::memcpy(p, &v, sizeof v);
}

inline float vsqrt(float x) {
  return std::sqrt(x);
}
inline vf vsqrt(vf x) {
#if defined(__AVX512F__)
  // The masked form with x as pass-through: _mm512_sqrt_ps starts from _mm512_undefined_ps(), which trips GCC 12's
  // -Wmaybe-uninitialized inside its own header.
  __m512 m = reinterpret_cast<__m512>(x);
  return reinterpret_cast<vf>(_mm512_mask_sqrt_ps(m, static_cast<__mmask16>(0xffff), m));
#elif defined(__AVX__)
  return reinterpret_cast<vf>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#else
  return reinterpret_cast<vf>(_mm_sqrt_ps(reinterpret_cast<__m128>(x)));
#endif
}

// 1 when a float (bit pattern) is inf or nan: all exponent bits set. Integer test, so the loop vectorizes.
inline uint32_t nonfinite_bit(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return (b & 0x7f800000u) == 0x7f800000u;
}

bool range_finite(const float* g, int64_t lo, int64_t hi, float inv_scale) {
  uint32_t bad = 0;
  for (int64_t i = lo; i < hi; ++i) bad |= nonfinite_bit(g[i] * inv_scale);
  return bad == 0;
}

template <class Slice>
bool pieces_finite(const std::vector<Piece>& pieces, const Slice* slices, float inv_scale) {
  std::atomic<bool> ok{true};
  parallel_for(static_cast<int64_t>(pieces.size()), 1, [&](int64_t lo, int64_t hi) {
    bool mine = true;
    for (int64_t k = lo; k < hi && mine; ++k) {
      const Piece& pc = pieces[static_cast<size_t>(k)];
      mine = range_finite(slices[pc.slice].grad, pc.lo, pc.hi, inv_scale);
    }
    if (!mine) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

// ---- Adam / AdamW ----
// Per-slice constants in f32, derived in double as torch does in Python (bias corrections, step size).
template <class T>
inline void adam_element(float* p, const float* g, float* m, float* v, const AdamConsts& k) {
  T gi = ld<T>(g) * k.inv_scale;
  T pi = ld<T>(p);
  if (k.decoupled)
    pi = pi * k.decay;  // param.mul_(1 - lr * weight_decay)
  else
    gi = gi + pi * k.wd;                                      // grad.add(param, alpha=weight_decay)
  T mi = ld<T>(m) * k.beta1 + gi * k.one_minus_beta1;         // exp_avg.mul_(beta1).add_(grad, alpha=1-beta1)
  T vi = ld<T>(v) * k.beta2 + (gi * k.one_minus_beta2) * gi;  // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1-beta2)
  T den = vsqrt(vi) / k.bc2_sqrt + k.eps;                     // (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
  pi = pi + (mi * k.neg_step_size) / den;                     // param.addcdiv_(exp_avg, denom, -step_size)
  st(p, pi);
  st(m, mi);
  st(v, vi);
}

// ---- SGD ----
struct SgdConsts {
  float momentum, wd, neg_lr, inv_scale;
  bool nesterov, first, has_momentum;
};

template <class T>
inline void sgd_element(float* p, const float* g, float* buf, const SgdConsts& k) {
  T pi = ld<T>(p);
  T d = ld<T>(g) * k.inv_scale + pi * k.wd;  // d_p.add(param, alpha=weight_decay)
  if (k.has_momentum) {
    T b = k.first ? d : ld<T>(buf) * k.momentum + d;  // buf = clone(d_p) | buf.mul_(momentum).add_(d_p)
    st(buf, b);
    d = k.nesterov ? d + b * k.momentum : b;
  }
  st(p, pi + d * k.neg_lr);  // param.add_(d_p, alpha=-lr)
}

}  // namespace

bool all_finite(const float* const* grads, const int64_t* sizes, size_t count, float inv_scale) {
  struct G {
    const float* grad;
  };
  std::vector<G> gs(count);
  for (size_t i = 0; i < count; ++i) gs[i].grad = grads[i];
  auto pieces = make_pieces(count, [&](size_t s) { return sizes[s]; });
  return pieces_finite(pieces, gs.data(), inv_scale);
}

bool adam_step(const AdamSlice* slices, size_t count, const AdamArgs& a) {
  auto pieces = make_pieces(count, [&](size_t s) { return slices[s].n; });
  if (!pieces_finite(pieces, slices, a.inv_scale)) return false;

  std::vector<AdamConsts> consts(count);
  for (size_t s = 0; s < count; ++s) consts[s] = adam_consts(a, slices[s].step);

  parallel_for(static_cast<int64_t>(pieces.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const Piece& pc = pieces[static_cast<size_t>(q)];
      const AdamSlice& s = slices[pc.slice];
      const AdamConsts& k = consts[pc.slice];
      int64_t i = pc.lo;
      for (; i + kLanes <= pc.hi; i += kLanes)
        adam_element<vf>(s.param + i, s.grad + i, s.exp_avg + i, s.exp_avg_sq + i, k);
      for (; i < pc.hi; ++i) adam_element<float>(s.param + i, s.grad + i, s.exp_avg + i, s.exp_avg_sq + i, k);
    }
  });
  return true;
}

bool sgd_step(const SgdSlice* slices, size_t count, const SgdArgs& a) {
  auto pieces = make_pieces(count, [&](size_t s) { return slices[s].n; });
  if (!pieces_finite(pieces, slices, a.inv_scale)) return false;

  std::vector<SgdConsts> consts(count);
  for (size_t s = 0; s < count; ++s)
    consts[s] = SgdConsts{static_cast<float>(a.momentum),
                          static_cast<float>(a.weight_decay),
                          static_cast<float>(-a.lr),
                          a.inv_scale,
                          a.nesterov,
                          slices[s].first,
                          a.momentum != 0.0};

  parallel_for(static_cast<int64_t>(pieces.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const Piece& pc = pieces[static_cast<size_t>(q)];
      const SgdSlice& s = slices[pc.slice];
      const SgdConsts& k = consts[pc.slice];
      float* buf = s.momentum_buffer;
      int64_t i = pc.lo;
      for (; i + kLanes <= pc.hi; i += kLanes) sgd_element<vf>(s.param + i, s.grad + i, buf ? buf + i : nullptr, k);
      for (; i < pc.hi; ++i) sgd_element<float>(s.param + i, s.grad + i, buf ? buf + i : nullptr, k);
    }
  });
  return true;
}

// The step's verdict goes into *nonfinite, as on a device; there is no workspace.
const OptimKernels optim_kernels{
    .optim_workspace_bytes = [](const int64_t*, size_t) -> size_t { return 0; },
    .adam_step = [](const AdamSlice* slices, size_t count, const AdamArgs& args, void*, int* nonfinite,
                    cudaStream_t) { *nonfinite = adam_step(slices, count, args) ? 0 : 1; },
    .sgd_step = [](const SgdSlice* slices, size_t count, const SgdArgs& args, void*, int* nonfinite,
                   cudaStream_t) { *nonfinite = sgd_step(slices, count, args) ? 0 : 1; },
};

}  // namespace unet::kernels::cpu
