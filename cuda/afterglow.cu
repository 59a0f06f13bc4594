// Afterglow (detector lag) removal over a block of frames.
//
// Model (see pipeline/ops/afterglow.py, whose NumPy remove_lag is the reference):
//   x_k = y_k - sum_n L_n ;  L_n <- r_n * (L_n + a_n * x_k)
// One thread per pixel loops over the frames of the block with its N lag states
// in registers; state is read at the start and written back at the end, so
// consecutive blocks chain exactly. Explicit round-to-nearest intrinsics stop
// the compiler from contracting into FMAs: the result is bit-identical to the
// NumPy reference (same float32 operations in the same order).
//
// Layout: y, x (T, P) frame-major; state (N, P); amps (N) or (N, P); ratios (N).
// x may alias y (in-place).

#define XRAY_MAX_LAG_TERMS 4

extern "C" __global__ void remove_lag_f32(const float* y, float* x, float* state, const float* amps,
                                          const float* ratios, int n_terms, int n_frames, long long n_pixels,
                                          int amps_per_pixel)
{
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    float L[XRAY_MAX_LAG_TERMS];
    float a[XRAY_MAX_LAG_TERMS];
    float r[XRAY_MAX_LAG_TERMS];
    for (int i = 0; i < XRAY_MAX_LAG_TERMS; ++i) {
        bool on = i < n_terms;
        L[i] = on ? state[(long long)i * n_pixels + p] : 0.0f;
        a[i] = on ? (amps_per_pixel ? amps[(long long)i * n_pixels + p] : amps[i]) : 0.0f;
        r[i] = on ? ratios[i] : 0.0f;
    }
    for (int k = 0; k < n_frames; ++k) {
        long long idx = (long long)k * n_pixels + p;
        float v = y[idx];
        for (int i = 0; i < n_terms; ++i) v = __fsub_rn(v, L[i]);
        for (int i = 0; i < n_terms; ++i) L[i] = __fmul_rn(__fadd_rn(L[i], __fmul_rn(v, a[i])), r[i]);
        x[idx] = v;
    }
    for (int i = 0; i < n_terms; ++i) state[(long long)i * n_pixels + p] = L[i];
}
