// The BSO / T-BSO flip in one pass per tensor, on CPU (see bso_snn/optim/_fused.py).
//
// Per element, with a = 1 - beta and the per-tensor scale s (1 for BSO, sqrt(v[t]) + eps for T-BSO):
//     M <- lerp(M, G, a)                 rounded exactly as ATen's lerp (below)
//     flip = (W * M) / s > gamma         W * M is exact (|W| = 1); a tie keeps its sign
//     W <- -W where flip;  M <- 0 where flip (when reset_momentum);  count += flip
//
// ATen's lerp with a scalar weight a in float/double: d = G - M, then
//     |a| < 0.5:  M + a * d            else:  G - d * (1 - a)  ==  G + (a - 1) * d   (a - 1 is exact)
// Its vectorised CPU loop evaluates that as one fused multiply-add, fma(c, d, base); a build without
// FMA rounds the product and the sum separately. Both variants are compiled here (this file is built
// with -ffp-contract=off, so only std::fma fuses) and bso_snn/optim/_fused.py picks the one that
// matches torch's own lerp_ on this machine, bit for bit, before it is ever used.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task

template <typename T, bool Fma, bool Scaled, bool Reset>
int64_t flip_range(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ m, int64_t begin, int64_t end,
                   T coeff, bool small, T scale, T gamma) {
  int64_t count = 0;
  for (int64_t i = begin; i < end; ++i) {
    const T d = g[i] - m[i];
    const T base = small ? m[i] : g[i];
    T mi = Fma ? std::fma(coeff, d, base) : base + coeff * d;
    T q = w[i] * mi;
    if (Scaled) q = q / scale;
    const bool flip = q > gamma;
    w[i] = flip ? -w[i] : w[i];
    if (Reset) mi = flip ? T(0) : mi;
    m[i] = mi;
    count += flip;
  }
  return count;
}

template <typename T, bool Fma, bool Scaled, bool Reset>
int64_t flip_tensor(const at::Tensor& w, const at::Tensor& g, const at::Tensor& m, double weight, T scale,
                    double gamma) {
  // The weight as ATen uses it: cast to the tensor's type once, then the coefficient of d.
  const T a = static_cast<T>(weight);
  const bool small = std::abs(a) < T(0.5);
  const T coeff = small ? a : a - T(1);
  T* wp = w.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  T* mp = m.data_ptr<T>();
  const T gamma_t = static_cast<T>(gamma);  // as `tensor > gamma` compares: in the tensor's type
  return at::parallel_reduce(
      int64_t(0), w.numel(), kGrain, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t partial) {
        return partial + flip_range<T, Fma, Scaled, Reset>(wp, gp, mp, begin, end, coeff, small, scale, gamma_t);
      },
      [](int64_t x, int64_t y) { return x + y; });
}

template <typename T>
int64_t dispatch(const at::Tensor& w, const at::Tensor& g, const at::Tensor& m, double weight,
                 const at::Tensor* scale, double gamma, bool reset, bool fma) {
  const T s = scale ? scale->item<T>() : T(1);
#define BSO_FLIP_CASE(F, S, R) \
  if (fma == F && (scale != nullptr) == S && reset == R) return flip_tensor<T, F, S, R>(w, g, m, weight, s, gamma);
  BSO_FLIP_CASE(true, true, true)
  BSO_FLIP_CASE(true, true, false)
  BSO_FLIP_CASE(true, false, true)
  BSO_FLIP_CASE(true, false, false)
  BSO_FLIP_CASE(false, true, true)
  BSO_FLIP_CASE(false, true, false)
  BSO_FLIP_CASE(false, false, true)
  BSO_FLIP_CASE(false, false, false)
#undef BSO_FLIP_CASE
  return 0;  // unreachable: the eight cases above are exhaustive
}

void check_tensor(const char* what, size_t i, const at::Tensor& t, const at::Tensor& w) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == w.scalar_type() &&
                  t.numel() == w.numel(),
              "bso_snn::flip_: ", what, "[", i, "] must be a contiguous CPU tensor of ", w.scalar_type(),
              " with ", w.numel(), " elements like params[", i, "]");
}

at::Tensor flip_(at::TensorList params, at::TensorList grads, at::TensorList momenta, at::TensorList scales,
                 double weight, double gamma, bool reset_momentum, bool fma) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && momenta.size() == n && (scales.empty() || scales.size() == n),
              "bso_snn::flip_: params, grads, momenta (and scales, when given) must have the same length");
  std::vector<int64_t> counts(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = params[i];
    const auto dtype = w.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "bso_snn::flip_: params[", i,
                "] has dtype ", dtype, "; the fused flip supports float32 and float64");
    check_tensor("params", i, w, w);
    check_tensor("grads", i, grads[i], w);
    check_tensor("momenta", i, momenta[i], w);
    const at::Tensor* scale = scales.empty() ? nullptr : &scales[i];
    if (scale) {
      TORCH_CHECK(scale->dim() == 0 && scale->scalar_type() == dtype && scale->device().is_cpu(),
                  "bso_snn::flip_: scales[", i, "] must be a 0-dim CPU tensor of ", dtype);
    }
    counts[i] = dtype == at::kFloat
                    ? dispatch<float>(w, grads[i], momenta[i], weight, scale, gamma, reset_momentum, fma)
                    : dispatch<double>(w, grads[i], momenta[i], weight, scale, gamma, reset_momentum, fma);
  }
  at::Tensor out = at::zeros({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  for (size_t i = 0; i < n; ++i) op[i] = counts[i];
  return out;
}

}  // namespace

TORCH_LIBRARY(bso_snn, lib) {
  lib.def(
      "flip_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momenta, Tensor[] scales, float weight, "
      "float gamma, bool reset_momentum, bool fma) -> Tensor");
}

TORCH_LIBRARY_IMPL(bso_snn, CPU, lib) { lib.impl("flip_", &flip_); }
