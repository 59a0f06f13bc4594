// Minimal CUDA emulation for testing kernel logic on a CPU with g++:
// __global__ functions become plain functions, launched by looping over the grid.
#pragma once
#include <cstddef>

struct xray_dim3 { unsigned x = 0, y = 0, z = 0; };
static xray_dim3 blockIdx, blockDim, threadIdx, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

// Round-to-nearest float ops: plain IEEE float ops (compile with -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }

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
