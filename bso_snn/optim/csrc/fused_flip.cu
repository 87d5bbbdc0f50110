// The BSO / T-BSO flip in one pass per tensor, on CUDA (see bso_snn/optim/_fused.py).
//
// Plain CUDA C with no includes: bso_snn compiles it at first use with NVRTC (which ships with every CUDA
// build of torch, so no nvcc is needed), and tests/test_fused.py compiles it with `nvcc --ptx` wherever nvcc
// exists. Per element, with a = 1 - beta and the per-tensor scale s (1 for BSO, sqrt(v[t]) + eps for T-BSO):
//     M <- lerp(M, G, a)               d = G - M;  |a| < 0.5: M + a*d,  else G + (a - 1)*d
//     flip = (W * M) / s > gamma       W * M is exact (|W| = 1); a tie keeps its sign
//     W <- -W where flip;  M <- 0 where flip (when reset);  count += flip
// Every operation is an explicitly rounded intrinsic (no contraction by the compiler): `fused` selects one
// fused multiply-add for lerp's product and sum, or two roundings; the loader picks the variant that
// equals torch's own lerp_ on the device, bit for bit.

template <typename T>
__device__ __forceinline__ T mul_rn(T x, T y);
template <>
__device__ __forceinline__ float mul_rn<float>(float x, float y) { return __fmul_rn(x, y); }
template <>
__device__ __forceinline__ double mul_rn<double>(double x, double y) { return __dmul_rn(x, y); }

template <typename T>
__device__ __forceinline__ T add_rn(T x, T y);
template <>
__device__ __forceinline__ float add_rn<float>(float x, float y) { return __fadd_rn(x, y); }
template <>
__device__ __forceinline__ double add_rn<double>(double x, double y) { return __dadd_rn(x, y); }

template <typename T>
__device__ __forceinline__ T sub_rn(T x, T y);
template <>
__device__ __forceinline__ float sub_rn<float>(float x, float y) { return __fsub_rn(x, y); }
template <>
__device__ __forceinline__ double sub_rn<double>(double x, double y) { return __dsub_rn(x, y); }

template <typename T>
__device__ __forceinline__ T div_rn(T x, T y);
template <>
__device__ __forceinline__ float div_rn<float>(float x, float y) { return __fdiv_rn(x, y); }
template <>
__device__ __forceinline__ double div_rn<double>(double x, double y) { return __ddiv_rn(x, y); }

template <typename T>
__device__ __forceinline__ T fma_rn(T x, T y, T z);
template <>
__device__ __forceinline__ float fma_rn<float>(float x, float y, float z) { return __fmaf_rn(x, y, z); }
template <>
__device__ __forceinline__ double fma_rn<double>(double x, double y, double z) { return __fma_rn(x, y, z); }

template <typename T>
__device__ void flip(T* w, const T* g, T* m, const T* scale, int scaled, int n, double weight, double gamma,
                     int reset, int fused, unsigned long long* count) {
  const T a = static_cast<T>(weight);
  const bool small = (a < T(0.5)) && (a > T(-0.5));
  const T coeff = small ? a : sub_rn(a, T(1));
  const T s = scaled ? *scale : T(1);
  const T threshold = static_cast<T>(gamma);
  unsigned int flips = 0;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T mi = m[i];
    const T gi = g[i];
    const T wi = w[i];
    const T d = sub_rn(gi, mi);
    const T base = small ? mi : gi;
    T mn = fused ? fma_rn(coeff, d, base) : add_rn(base, mul_rn(coeff, d));
    T q = mul_rn(wi, mn);
    if (scaled) q = div_rn(q, s);
    const bool f = q > threshold;
    w[i] = f ? -wi : wi;
    if (reset && f) mn = T(0);
    m[i] = mn;
    flips += f;
  }
  for (int offset = 16; offset > 0; offset >>= 1) flips += __shfl_down_sync(0xffffffffu, flips, offset);
  if ((threadIdx.x & 31) == 0 && flips) atomicAdd(count, static_cast<unsigned long long>(flips));
}

extern "C" __global__ void bso_snn_flip_f32(float* w, const float* g, float* m, const float* scale, int scaled,
                                            int n, double weight, double gamma, int reset, int fused,
                                            unsigned long long* count) {
  flip<float>(w, g, m, scale, scaled, n, weight, gamma, reset, fused, count);
}

extern "C" __global__ void bso_snn_flip_f64(double* w, const double* g, double* m, const double* scale,
                                            int scaled, int n, double weight, double gamma, int reset,
                                            int fused, unsigned long long* count) {
  flip<double>(w, g, m, scale, scaled, n, weight, gamma, reset, fused, count);
}
