// Minimal CUDA emulation for testing kernel logic on a CPU with g++:
// __global__ functions become plain functions, launched by looping over the grid.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>

#define XRAY_EMULATION 1  // .cu sources pick host versions of PTX-only pieces (inline asm)

struct xray_dim3 { unsigned x = 0, y = 0, z = 0; };
static xray_dim3 blockIdx, blockDim, threadIdx, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

// Round-to-nearest float ops: plain IEEE float ops (compile with -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
// float -> int, round half to even (the default rounding mode), saturating; NaN -> 0 (cvt.rni.s32.f32).
inline int __float2int_rn(float a) {
    if (a != a) return 0;
    if (a >= 2147483648.0f) return 2147483647;
    if (a <= -2147483648.0f) return -2147483647 - 1;
    return (int)std::nearbyint(a);
}

// Bit casts.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, sizeof u); return u; }

// float16 as its bits; __float2half_rn rounds to nearest even (IEEE 754, like cvt.rn.f16.f32),
// overflow to Inf, subnormals kept; a NaN stays a (quiet) NaN.
struct __half { std::uint16_t x; };
inline __half __float2half_rn(float f) {
    std::uint32_t u = __float_as_uint(f);
    std::uint32_t sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu, man = u & 0x7fffffu;
    if (exp == 0xffu) return {(std::uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u))};
    int e = (int)exp - 127 + 15;
    if (e >= 31) return {(std::uint16_t)(sign | 0x7c00u)};
    if (e <= 0) {  // a float16 subnormal (or zero)
        if (e < -10) return {(std::uint16_t)sign};
        std::uint32_t m = man | 0x800000u;
        int shift = 14 - e;
        std::uint32_t h = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return {(std::uint16_t)(sign | h)};
    }
    std::uint32_t h = sign | ((std::uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right (up to Inf)
    return {(std::uint16_t)h};
}
inline unsigned short __half_as_ushort(__half h) { return h.x; }

template <class Kernel, class... Args>
void xray_launch(unsigned grid, unsigned block, Kernel kernel, Args... args) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            kernel(args...);
        }
}
