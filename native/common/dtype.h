// Element types shared by every layer. Codes match lib/dtype.ts (DTYPE_CODE).
// f16/bf16 arrive as raw 16-bit patterns; conversion is bit-exact IEEE (f16) and
// round-to-nearest-even truncation of f32 (bf16), usable from host and device code.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KD_HD __host__ __device__ __forceinline__
#else
#define KD_HD inline __attribute__((always_inline))
#endif

namespace kd {

enum DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2, kI32 = 3, kU8 = 4 };

KD_HD int dtype_size(int32_t dt) {
  return dt == kF32 || dt == kI32 ? 4 : dt == kU8 ? 1 : 2;
}
KD_HD bool dtype_is_float(int32_t dt) { return dt == kF32 || dt == kF16 || dt == kBF16; }

KD_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
KD_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

KD_HD float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

// Round-to-nearest-even; NaN stays a (quiet) NaN.
KD_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// IEEE half -> float, branch-light, exact for normals, subnormals, inf and NaN.
KD_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));      // inf / NaN
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13)); // normal
  // subnormal (or zero): man * 2^-24, exact in f32
  float v = float(man) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

// float -> IEEE half, round-to-nearest-even, overflow to inf, NaN preserved.
KD_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);        // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);       // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                       // result is subnormal or 0
    // value * 2^24 rounded to nearest even integer = subnormal mantissa
    float v = bits_f32(a) * 16777216.0f;
    uint32_t m = uint32_t(v);
    float rem = v - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return uint16_t(sign | m);
  }
  uint32_t r = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent (-112<<23) and round
  return uint16_t(sign | (r >> 13));
}

template <int DT> struct Elem;
template <> struct Elem<kF32> { using T = float; static KD_HD float load(const T* p) { return *p; } static KD_HD T store(float f) { return f; } };
template <> struct Elem<kF16> { using T = uint16_t; static KD_HD float load(const T* p) { return f16_to_f32(*p); } static KD_HD T store(float f) { return f32_to_f16(f); } };
template <> struct Elem<kBF16> { using T = uint16_t; static KD_HD float load(const T* p) { return bf16_to_f32(*p); } static KD_HD T store(float f) { return f32_to_bf16(f); } };

KD_HD float load_as_f32(const void* base, int32_t dt, int64_t i) {
  if (dt == kF32) return static_cast<const float*>(base)[i];
  uint16_t h = static_cast<const uint16_t*>(base)[i];
  return dt == kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
}
KD_HD void store_from_f32(void* base, int32_t dt, int64_t i, float v) {
  if (dt == kF32) static_cast<float*>(base)[i] = v;
  else static_cast<uint16_t*>(base)[i] = dt == kBF16 ? f32_to_bf16(v) : f32_to_f16(v);
}

}  // namespace kd
