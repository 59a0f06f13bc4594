// Denoisers on the GPU: the motion-adaptive temporal filter (one launch per frame) and non-local
// means (one launch per frame), the two that CuPy's array operations would run as hundreds of
// small kernels per frame.
//
// The NumPy references are pipeline/ops/denoise.py's temporal_filter and nl_means (the array
// code); tests/cuda/test_denoise_emulated.py runs these kernels on the CPU under
// tests/cuda/emulate.h against them. Both kernels are plain one-thread-per-output loops (no shared
// memory, no barriers) so that the emulation (a loop over the grid) runs them as the GPU does.
//
// Edges, as the references: "reflect" below is scipy.ndimage's mode="reflect" (d c b a | a b c d,
// the edge repeated), used by the box filters; "mirror" is numpy.pad's mode="reflect"
// (d c b | a b c d, the edge not repeated), used for the NLM search window.
//
// Kernels (extern "C"): temporal_step_f32, nl_means_f32 and its patch-size specialisations nl_means_f32_p3,
// nl_means_f32_p5, nl_means_f32_p7; the guided filter in four launches per frame: guided_colsum_f32,
// guided_coef_f32, guided_colsum_ab_f32, guided_apply_f32.

#define XRAY_NLM_RUN 16        // output rows per NLM thread (a vertical strip of one column)
#define XRAY_NLM_MAX_PATCH 15  // largest NLM patch (the strip's row sums live in a local array)
#define XRAY_GUIDED_RUN 32     // rows per thread of the guided filter's column sums

__device__ __forceinline__ bool xray_isfinite(float v) { return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u; }

__device__ __forceinline__ int xray_reflect(int i, int n)
{
    while (i < 0 || i >= n) {
        if (i < 0) i = -i - 1;
        if (i >= n) i = 2 * n - i - 1;
    }
    return i;
}

__device__ __forceinline__ int xray_mirror(int i, int n)
{
    if (n == 1) return 0;
    while (i < 0 || i >= n) {
        if (i < 0) i = -i;
        if (i >= n) i = 2 * (n - 1) - i;
    }
    return i;
}

// One frame of the temporal filter (ops.denoise.temporal_filter):
//   d = y - x_prev (0 where not finite), hs = smooth x smooth box mean of d (float64 sum, reflect edges)
//   sig = sqrt(max(alpha * x + beta, 1e-12)) * infl     (x: 0 where not finite)
//   g = gmin + (1 - gmin) * clip((|hs| / sig - lo) / span, 0, 1); g = max(g, hold * k_prev); 1 where d is not finite
//   x_next = x_prev + g * d (y where x_prev is not finite); k_prev <- g
// with the same float32 operations in the same order as the reference (no FMA contraction).
// Every thread reads its neighbours' y and x_prev, so x_next must be another buffer than x_prev,
// and nothing may write y during the launch. out_prev (may be NULL) receives x_prev: the previous
// frame's output, written one launch late so that `out` may be the frames themselves.
extern "C" __global__ void temporal_step_f32(const float* y, const float* x_prev, float* k_prev, float* x_next,
                                             float* out_prev, int h, int w, int smooth, float alpha, float beta,
                                             float infl, float gmin, float lo, float span, float hold)
{
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w) return;
    int row = (int)(p / w), col = (int)(p % w);
    float xv = x_prev[p], yv = y[p];
    float d = __fsub_rn(yv, xv);
    bool fin = xray_isfinite(d);
    float dz = fin ? d : 0.0f;
    float hs = dz;
    if (smooth > 1) {
        int left = smooth / 2;
        double s = 0.0;
        for (int a = 0; a < smooth; ++a) {
            long long base = (long long)xray_reflect(row - left + a, h) * w;
            for (int b = 0; b < smooth; ++b) {
                long long q = base + xray_reflect(col - left + b, w);
                float e = __fsub_rn(y[q], x_prev[q]);
                s += xray_isfinite(e) ? (double)e : 0.0;
            }
        }
        hs = (float)(s * (1.0 / ((double)smooth * smooth)));
    }
    bool okx = xray_isfinite(xv);
    float xf = okx ? xv : 0.0f;
    float sig = __fmul_rn(__fsqrt_rn(fmaxf(__fadd_rn(__fmul_rn(alpha, xf), beta), 1e-12f)), infl);
    float c = fminf(fmaxf(__fdiv_rn(__fsub_rn(__fdiv_rn(fabsf(hs), sig), lo), span), 0.0f), 1.0f);
    float g = __fadd_rn(gmin, __fmul_rn(__fsub_rn(1.0f, gmin), c));
    g = fmaxf(g, __fmul_rn(hold, k_prev[p]));  // hold 0: g itself (g >= gmin >= 0)
    g = fin ? g : 1.0f;
    k_prev[p] = g;
    x_next[p] = okx ? __fadd_rn(xv, __fmul_rn(g, dz)) : yv;
    if (out_prev) out_prev[p] = xv;
}

// Non-local means of one (h, w) float32 image (ops.denoise.nl_means, the "fast" form): for every
// offset (dy, dx) of the (2r+1)^2 search window, d2 = patch x patch box mean (reflect edges) of
// (f[mirror(y+dy), mirror(x+dx)] - f[y, x])^2; weight exp(-max(d2 - sig2, 0) * inv_h2) (1 where
// d2 <= sig2); out = sum(weight * neighbour) / sum(weight). Sums in float32 (the reference sums in
// float64: they agree to float32 rounding).
//
// Thread t takes column t % w of the strip of XRAY_NLM_RUN rows starting at (t / w) * XRAY_NLM_RUN:
// per offset it sums the patch's rows once for the strip (run + patch - 1 row sums) and every
// output row adds `patch` of them. Consecutive threads read consecutive columns (coalesced).
//
// P > 0: a patch of P columns known at compile time, every loop over the patch and the strip unrolled,
// so the row sums and the patch's columns live in registers (nl_means_f32_p3/_p5/_p7). P == 0: the
// runtime `patch` (up to XRAY_NLM_MAX_PATCH), its arrays in local memory (nl_means_f32). Both add the
// same float32 values in the same order: the same result bit for bit.
template <int P>
__device__ __forceinline__ void xray_nl_means(const float* f, float* out, int h, int w, int r, int patch_rt,
                                              float inv_h2, float sig2)
{
    constexpr int PM = P > 0 ? P : XRAY_NLM_MAX_PATCH;  // the arrays' sizes
    constexpr int UNROLL_PATCH = P > 0 ? PM : 1;
    constexpr int UNROLL_ROWS = P > 0 ? XRAY_NLM_RUN + PM - 1 : 1;
    const int patch = P > 0 ? P : patch_rt;
    // loop bounds: compile-time constants (unrolled, guarded) for a fixed patch; the runtime counts for the
    // generic kernel, so that it runs no more iterations than it has work
    const int n_cols = P > 0 ? PM : patch;
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long strips = (h + XRAY_NLM_RUN - 1) / XRAY_NLM_RUN;
    if (t >= strips * w || patch < 1 || patch > PM) return;
    int col = (int)(t % w), y0 = (int)(t / w) * XRAY_NLM_RUN;
    int nr = h - y0 < XRAY_NLM_RUN ? h - y0 : XRAY_NLM_RUN;
    int left = patch / 2;
    float inv_area = 1.0f / (float)(patch * patch);
    float num[XRAY_NLM_RUN], den[XRAY_NLM_RUN];
    float rs[XRAY_NLM_RUN + PM - 1];
    int xs[PM];  // the patch's columns (reflect)
#pragma unroll
    for (int i = 0; i < XRAY_NLM_RUN; ++i) num[i] = den[i] = 0.0f;
#pragma unroll UNROLL_PATCH
    for (int b = 0; b < n_cols; ++b)
        if (b < patch) xs[b] = xray_reflect(col - left + b, w);
    for (int dy = -r; dy <= r; ++dy) {
        for (int dx = -r; dx <= r; ++dx) {
            int nxs[PM];  // the shifted patch columns (mirror), the same for every row
#pragma unroll UNROLL_PATCH
            for (int b = 0; b < n_cols; ++b)
                if (b < patch) nxs[b] = xray_mirror(xs[b] + dx, w);
#pragma unroll UNROLL_ROWS
            for (int j = 0; j < (P > 0 ? XRAY_NLM_RUN + PM - 1 : nr + patch - 1); ++j) {  // a guard, not a break:
                // a break kept rs in local memory
                if (j < nr + patch - 1) {
                    int yy = xray_reflect(y0 - left + j, h);
                    const float* fr = f + (long long)yy * w;
                    const float* nr_row = f + (long long)xray_mirror(yy + dy, h) * w;
                    float s = 0.0f;
#pragma unroll UNROLL_PATCH
                    for (int b = 0; b < n_cols; ++b) {
                        if (b < patch) {
                            float e = __fsub_rn(nr_row[nxs[b]], fr[xs[b]]);
                            s = __fadd_rn(s, __fmul_rn(e, e));
                        }
                    }
                    rs[j] = s;
                }
            }
            int nx = xray_mirror(col + dx, w);
#pragma unroll
            for (int i = 0; i < XRAY_NLM_RUN; ++i) {  // unrolled: num and den stay in registers
                if (i >= nr) break;
                float s = 0.0f;
#pragma unroll UNROLL_PATCH
                for (int a = 0; a < n_cols; ++a)
                    if (a < patch) s = __fadd_rn(s, rs[i + a]);
                float z = __fsub_rn(__fmul_rn(s, inv_area), sig2);
                float q = z <= 0.0f ? 1.0f : expf(-__fmul_rn(z, inv_h2));  // a NaN distance: NaN, as the reference
                float v = f[(long long)xray_mirror(y0 + i + dy, h) * w + nx];
                num[i] = __fadd_rn(num[i], __fmul_rn(q, v));
                den[i] = __fadd_rn(den[i], q);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < XRAY_NLM_RUN; ++i)
        if (i < nr) out[(long long)(y0 + i) * w + col] = __fdiv_rn(num[i], den[i]);
}

extern "C" __global__ void nl_means_f32(const float* f, float* out, int h, int w, int r, int patch, float inv_h2,
                                        float sig2)
{
    xray_nl_means<0>(f, out, h, w, r, patch, inv_h2, sig2);
}

// nl_means_f32_p<P>: the patch sizes one sets (pipeline.kernels.NLM_SPECIALISED), with nl_means_f32's parameters
#define XRAY_NLM_KERNEL(P)                                                                                      \
    extern "C" __global__ void nl_means_f32_p##P(const float* f, float* out, int h, int w, int r, int patch,    \
                                                 float inv_h2, float sig2)                                      \
    {                                                                                                           \
        xray_nl_means<P>(f, out, h, w, r, patch, inv_h2, sig2);                                                 \
    }

XRAY_NLM_KERNEL(3)
XRAY_NLM_KERNEL(5)
XRAY_NLM_KERNEL(7)

// ------------------------------------------------------------------------------------------ guided filter
// The self-guided filter of one (h, w) frame inside the generalised Anscombe transform
// (ops.denoise.guided_denoise; the Numba kernel cpu/denoise.py's _guided does the same sums):
//   t = GAT(x)  (mode 1: k sqrt(max(alpha x + c, 0)); mode 2: x / k; mode 0: x)
//   m, m2 = box means of t and t^2 (float64), v = max(m2 - m^2, 0)
//   a = float(v / (v + eps)), b = float(m (1 - a))
//   q = float(box mean of a) t + float(box mean of b), then the inverse GAT (mode 1: the closed form of
//   ops.denoise.gat_inverse with ib = beta / alpha^2; mode 2: q alpha; mode 0: q)
// Boxes are (2r+1)^2 with scipy's "reflect" edges. Each box mean is separable: a column sum (one thread
// per column and strip of XRAY_GUIDED_RUN rows, sliding down: coalesced) then a row sum of 2r+1 column sums
// (one thread per pixel; neighbouring threads share their loads in cache). Sums in float64 as the
// references (E[t^2] - E[t]^2 of GAT values far from zero would lose the variance in float32); the float64
// sums are added in another order than the references': equal to float32 rounding.
// Four launches per frame, each reading what the previous one wrote: guided_colsum_f32 (t, t^2 -> s1, s2),
// guided_coef_f32 (s1, s2 -> a, b), guided_colsum_ab_f32 (a, b -> s1, s2), guided_apply_f32 (s1, s2, x -> out).

__device__ __forceinline__ float xray_gat(float x, int mode, float k, float c, float alpha)
{
    if (mode == 1) return __fmul_rn(k, __fsqrt_rn(fmaxf(__fadd_rn(__fmul_rn(alpha, x), c), 0.0f)));
    if (mode == 2) return __fdiv_rn(x, k);
    return x;
}

__device__ __forceinline__ float xray_gat_inverse(float q, int mode, float alpha, float ib)
{
    if (mode == 2) return __fmul_rn(q, alpha);
    if (mode != 1) return q;
    const float s15 = 1.22474487139158905f;  // float32(sqrt(1.5))
    float dd = fmaxf(q, 0.8f);
    float d2 = __fmul_rn(dd, dd);
    float v = __fmul_rn(__fmul_rn(0.25f, dd), dd);
    v = __fadd_rn(v, __fdiv_rn(__fmul_rn(0.25f, s15), dd));
    v = __fsub_rn(v, __fdiv_rn(1.375f, d2));
    v = __fadd_rn(v, __fdiv_rn(__fmul_rn(0.625f, s15), __fmul_rn(d2, dd)));
    v = __fsub_rn(__fsub_rn(v, 0.125f), ib);
    return __fmul_rn(alpha, v);
}

// The two values a pixel adds to the column sums: t and t^2 (t the GAT of x), or a and b.
struct XrayGatAndSquare {
    const float* x;
    int mode;
    float k, c, alpha;
    __device__ __forceinline__ void operator()(long long q, double& v1, double& v2) const
    {
        double v = (double)xray_gat(x[q], mode, k, c, alpha);
        v1 = v;
        v2 = v * v;
    }
};

struct XrayPair {
    const float* a;
    const float* b;
    __device__ __forceinline__ void operator()(long long q, double& v1, double& v2) const
    {
        v1 = (double)a[q];
        v2 = (double)b[q];
    }
};

// s1[y, x] = sum over j in -r..r of v1 at (reflect(y + j), x), s2 the same of v2: one thread per column and strip
// of XRAY_GUIDED_RUN rows, the sums sliding down it.
template <class Values>
__device__ __forceinline__ void xray_column_sums(Values values, double* s1, double* s2, int h, int w, int r)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long strips = (h + XRAY_GUIDED_RUN - 1) / XRAY_GUIDED_RUN;
    if (i >= strips * w) return;
    int col = (int)(i % w), y0 = (int)(i / w) * XRAY_GUIDED_RUN;
    int y1 = y0 + XRAY_GUIDED_RUN < h ? y0 + XRAY_GUIDED_RUN : h;
    double c1 = 0.0, c2 = 0.0, v1, v2, u1, u2;
    for (int j = -r; j <= r; ++j) {
        values((long long)xray_reflect(y0 + j, h) * w + col, v1, v2);
        c1 += v1;
        c2 += v2;
    }
    for (int y = y0; y < y1; ++y) {
        long long p = (long long)y * w + col;
        s1[p] = c1;
        s2[p] = c2;
        if (y + 1 < y1) {
            values((long long)xray_reflect(y + 1 + r, h) * w + col, v1, v2);
            values((long long)xray_reflect(y - r, h) * w + col, u1, u2);
            c1 += v1 - u1;
            c2 += v2 - u2;
        }
    }
}

// The box sums at pixel p: the row sums of the column sums s1, s2 over the 2r+1 columns about p's (reflect edges).
__device__ __forceinline__ void xray_row_sums(const double* s1, const double* s2, long long p, int w, int r,
                                              double& e1, double& e2)
{
    long long row = (p / w) * w;
    int col = (int)(p % w);
    e1 = 0.0;
    e2 = 0.0;
    for (int j = -r; j <= r; ++j) {
        long long q = row + xray_reflect(col + j, w);
        e1 += s1[q];
        e2 += s2[q];
    }
}

// s1, s2 = the column sums of t and t^2 (t the GAT of x).
extern "C" __global__ void guided_colsum_f32(const float* x, double* s1, double* s2, int h, int w, int r, int mode,
                                             float k, float c, float alpha)
{
    xray_column_sums(XrayGatAndSquare{x, mode, k, c, alpha}, s1, s2, h, w, r);
}

// a, b at every pixel from the row sums of s1, s2: the box mean m and variance v of t.
extern "C" __global__ void guided_coef_f32(const double* s1, const double* s2, float* a, float* b, int h, int w,
                                           int r, double eps, double scale)
{
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w) return;
    double e1, e2;
    xray_row_sums(s1, s2, p, w, r, e1, e2);
    double m = e1 * scale, m2 = e2 * scale;
    double v = m2 - m * m;
    v = v > 0.0 ? v : 0.0;
    float av = (float)(v / (v + eps));
    a[p] = av;
    b[p] = (float)(m * (1.0 - (double)av));
}

// s1, s2 = the column sums of a and b.
extern "C" __global__ void guided_colsum_ab_f32(const float* a, const float* b, double* s1, double* s2, int h, int w,
                                                int r)
{
    xray_column_sums(XrayPair{a, b}, s1, s2, h, w, r);
}

// out = inverse GAT of float(box mean of a) t + float(box mean of b); out may be x (each thread reads its own).
extern "C" __global__ void guided_apply_f32(const float* x, const double* s1, const double* s2, float* out, int h,
                                            int w, int r, double scale, int mode, float k, float c, float alpha,
                                            float ib)
{
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)h * w) return;
    double e1, e2;
    xray_row_sums(s1, s2, p, w, r, e1, e2);
    float t = xray_gat(x[p], mode, k, c, alpha);
    float q = __fadd_rn(__fmul_rn((float)(e1 * scale), t), (float)(e2 * scale));
    out[p] = xray_gat_inverse(q, mode, alpha, ib);
}
