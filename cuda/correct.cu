// Fused per-pixel correction of a block of raw frames: flat field, bad pixels, afterglow, saturation.
//
// One thread per pixel loops over the T frames of the block with the afterglow lag states in
// registers (as cuda/afterglow.cu), loading XRAY_FRAMES_IN_FLIGHT frames' raw values at a time.
// The bad pixels' replacement values come from a first, small launch (bad_heads_*: one thread per
// bad pixel and frame), so the main loop of a warp holding a bad pixel waits on one extra load,
// not on a median of its neighbours. Per frame k and pixel p the two compute what the NumPy chain
// (pipeline.stages: FlatFieldStage.head -> AfterglowStage -> FlatFieldStage.tail, linear output)
// computes, with the same float32 operations in the same order, so the float32 output and the
// state are bit-identical to it (tests/cuda/test_correct_emulated.py checks this):
//
//   head   v = (float(raw) - dark) * inv                      flat_field: o = raw; o -= dark; o *= inv
//          a bad pixel (slot[p] >= 0): v = median of the head values of its good neighbours,
//          computed from their raw values, exactly as replace_bad_pixels (np.nanmedian):
//          NaN values and -1 entries left out; odd count: (m + m) * 0.5; even: (lo + hi) * 0.5
//          (both exact halvings, as np.ma.median's sum / 2.); none left: NaN.
//   lag    a non-finite v enters the recursion as 0 (AfterglowStage) and comes out NaN:
//          x = v - sum_n L_n ; L_n <- r_n * (L_n + x * a_n)  (__fsub_rn/__fmul_rn/__fadd_rn: no FMA)
//   tail   raw >= saturation -> NaN in the output, never in the state (the mask is applied after
//          the recursion, as FlatFieldStage.tail does); a bad pixel (slot[p] >= 0) never by its own
//          raw value (a hot pixel stuck at 65535 is replaced, not saturated): saturate_bad_* marks it
//          where more than half of the neighbours of its median are saturated (below).
//
// A uint16 code output (c16: output.dtype uint16, pipeline.ops.quantise.encode) is
// rint(o * scale + offset) in float32 (no FMA), clipped to 1..65535, NaN stored as 0: bit-identical
// to encode of the float32 output (the conversion rounds half to even and saturates, as rint + clip).
//
// Float16 outputs are the float32 result rounded to nearest even (cvt.rn.f16.f32, what
// __float2half_rn compiles to), NaN written as 0x7E00 like NumPy's astype(float16): bit-identical
// to NumPy's float32 -> float16 conversion of the float32 output.
//
// Layout: raw, out (T, P) frame-major (out must not overlap raw); state (N, P); amps (N) or
// (N, P); ratios (N); dark, inv, slot (P); neighbours (n_bad, k_max) int32 flat indices, -1 = none;
// bad (T, n_bad) float32, the replacement values (bad_heads_* writes them, correct_* reads them).
// slot[p] is the row of pixel p in `neighbours` and the column in `bad` (-1: a good pixel); slot
// may be NULL (no bad-pixel replacement: no bad_heads_* launch). saturation: the threshold compared with float(raw) (the host turns the
// configured level into it: ceil(level) for integer input, float32(level) for float input, as
// NumPy compares); NaN disables the check. nonfinite_to_nan: 1 when the chain has an afterglow
// stage (which turns non-finite values into NaN); float input always turns them into NaN
// (FlatFieldStage.head).
//
// Kernels (extern "C"): bad_heads_u16, bad_heads_f32 and their _k8/_k24 versions for narrow tables
// (launched first, where there are bad pixels);
// correct_u16_f32, correct_u16_f16, correct_u16_c16, correct_f32_f32, correct_f32_f16, correct_f32_c16
// (input dtype _ output: float32, float16 passed as unsigned short, or the uint16 code with
// code_scale and code_offset, which the other outputs ignore); saturate_u16 and
// saturate_f32 (the saturation mask alone, for chains with denoisers; see the end of the file);
// saturate_good_u16/_f32 (the same, leaving the bad pixels) and saturate_bad_<in>_<out> (the bad
// pixels' saturation by their neighbours, launched after correct_* or saturate_good_*).

#ifndef XRAY_MAX_LAG_TERMS
#define XRAY_MAX_LAG_TERMS 4
#endif
#define XRAY_MAX_NEIGHBOURS 80  // (2 * 4 + 1)^2 - 1: neighbour_table's largest square, max_radius=4

#ifndef XRAY_EMULATION
// The float16 conversion without cuda_fp16.h (nvrtc finds no toolkit headers on a wheel-only install).
__device__ __forceinline__ unsigned short xray_f2h(float v)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#else
inline unsigned short xray_f2h(float v) { return __half_as_ushort(__float2half_rn(v)); }
#endif

__device__ __forceinline__ float xray_nan() { return __int_as_float(0x7fc00000); }  // NumPy's np.nan

// isfinite without math headers: the exponent is not all ones.
__device__ __forceinline__ bool xray_finite(float v) { return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u; }

__device__ __forceinline__ void xray_store(float* out, long long i, float v) { out[i] = v; }
__device__ __forceinline__ void xray_store(unsigned short* out, long long i, float v)
{
    out[i] = (v != v) ? (unsigned short)0x7e00 : xray_f2h(v);
}

// The uint16 code of v (see the top of the file); __float2int_rn rounds half to even and saturates.
__device__ __forceinline__ unsigned short xray_code(float v, float scale, float offset)
{
    float x = __fadd_rn(__fmul_rn(v, scale), offset);
    if (x != x) return 0;  // NaN: the missing value
    int i = __float2int_rn(x);
    return (unsigned short)(i < 1 ? 1 : (i > 65535 ? 65535 : i));
}

template <typename Tin>
__device__ __forceinline__ float xray_head(const Tin* frame, const float* dark, const float* inv, long long q)
{
    return __fmul_rn(__fsub_rn((float)frame[q], dark[q]), inv[q]);
}

// np.nanmedian of the head values of the neighbours in `nb` (k_max entries, -1 = none).
template <typename Tin>
__device__ float xray_neighbour_median(const Tin* frame, const float* dark, const float* inv, const int* nb,
                                       int k_max)
{
    float v[XRAY_MAX_NEIGHBOURS];
    int n = 0;
    for (int j = 0; j < k_max; ++j) {
        int q = nb[j];
        if (q < 0) continue;
        float x = xray_head(frame, dark, inv, q);
        if (x != x) continue;  // NaN: left out, as nanmedian does
        int i = n++;
        while (i > 0 && v[i - 1] > x) {  // insertion sort: a handful of values
            v[i] = v[i - 1];
            --i;
        }
        v[i] = x;
    }
    if (n == 0) return xray_nan();
    if (k_max == 1) return v[0];  // replace_bad_pixels takes a one-column table as it is
    int h = n / 2;
    int l = (n & 1) ? h : h - 1;
    return __fmul_rn(__fadd_rn(v[l], v[h]), 0.5f);
}

// The same median for tables of at most K columns, in registers: every valid value's rank among the
// valid ones (ties broken by column, the order the insertion sort above keeps) picks the two middle
// values, so the result is the generic version's bit for bit without its local-memory array.
template <typename Tin, int K>
__device__ __forceinline__ float xray_neighbour_median_k(const Tin* frame, const float* dark, const float* inv,
                                                         const int* nb, int k_max)
{
    float v[K];
    bool ok[K];
    int n = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        int q = j < k_max ? nb[j] : -1;
        v[j] = q >= 0 ? xray_head(frame, dark, inv, q) : 0.0f;
        ok[j] = q >= 0 && v[j] == v[j];  // NaN left out
        n += ok[j];
    }
    if (n == 0) return xray_nan();
    float lo = 0.0f, hi = 0.0f, first = 0.0f;
    int h = n / 2;
    int l = (n & 1) ? h : h - 1;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        int rank = 0;
#pragma unroll
        for (int i = 0; i < K; ++i) rank += ok[i] && (v[i] < v[j] || (v[i] == v[j] && i < j));
        if (ok[j] && rank == l) lo = v[j];
        if (ok[j] && rank == h) hi = v[j];
        if (ok[j] && rank == 0) first = v[j];
    }
    if (k_max == 1) return first;  // replace_bad_pixels takes a one-column table as it is
    return __fmul_rn(__fadd_rn(lo, hi), 0.5f);
}

// One frame of one pixel: head value v -> lag recursion -> output (see the top of the file).
template <bool kFloatIn>
__device__ __forceinline__ float xray_lag_step(float v, float* L, const float* a, const float* r, int n_terms,
                                               int nonfinite_to_nan)
{
    bool finite = xray_finite(v);
    float x = finite ? v : 0.0f;
#pragma unroll
    for (int i = 0; i < XRAY_MAX_LAG_TERMS; ++i)
        if (i < n_terms) x = __fsub_rn(x, L[i]);
#pragma unroll
    for (int i = 0; i < XRAY_MAX_LAG_TERMS; ++i)
        if (i < n_terms) L[i] = __fmul_rn(__fadd_rn(L[i], __fmul_rn(x, a[i])), r[i]);
    return finite ? x : ((kFloatIn || nonfinite_to_nan) ? xray_nan() : v);
}

#ifndef XRAY_FRAMES_IN_FLIGHT
#define XRAY_FRAMES_IN_FLIGHT 4  // raw loads issued together per thread (memory-level parallelism)
#endif
#ifndef XRAY_PREFETCH_BAD
// 1: a bad pixel's replacement values for the XRAY_FRAMES_IN_FLIGHT frames are loaded together with the
// raw values (ptxas otherwise issues each after the previous frame's store: one more memory latency a
// frame for every warp that holds a bad pixel); 0: loaded frame by frame (the benchmark's comparison)
#define XRAY_PREFETCH_BAD 1
#endif

// V consecutive values of one array, loaded or stored as one access (V = 4: 8 bytes of uint16, 16 of
// float32); the pointer must be aligned to the whole pack (the host checks, and falls back to V = 1).
template <typename T, int V>
struct alignas(sizeof(T) * V) xray_pack {
    T v[V];
};

template <typename T, int V>
__device__ __forceinline__ xray_pack<T, V> xray_load(const T* base, long long i)
{
    return *reinterpret_cast<const xray_pack<T, V>*>(base + i);
}

template <typename T, int V>
__device__ __forceinline__ void xray_save(T* base, long long i, const xray_pack<T, V>& x)
{
    *reinterpret_cast<xray_pack<T, V>*>(base + i) = x;
}

// One output value as stored: float32; float16 bits (kCode false) or the uint16 code (kCode true).
template <bool kCode>
__device__ __forceinline__ float xray_out(float v, float*, float, float) { return v; }
template <bool kCode>
__device__ __forceinline__ unsigned short xray_out(float v, unsigned short*, float scale, float offset)
{
    return kCode ? xray_code(v, scale, offset) : ((v != v) ? (unsigned short)0x7e00 : xray_f2h(v));
}

// Thread q takes the V pixels p = q * V .. q * V + V - 1 (n_pixels must be a multiple of V); every
// pixel gets exactly the scalar computation at the top of the file, so V changes only the accesses.
template <typename Tin, typename Tout, bool kFloatIn, bool kCode, int V>
__device__ __forceinline__ void xray_correct(const Tin* __restrict__ raw, Tout* __restrict__ out,
                                             float* __restrict__ state, const float* __restrict__ dark,
                                             const float* __restrict__ inv, const int* __restrict__ slot,
                                             const float* __restrict__ bad, int n_bad,
                                             const float* __restrict__ amps, const float* __restrict__ ratios,
                                             int n_terms, int amps_per_pixel, int n_frames, long long n_pixels,
                                             float saturation, int nonfinite_to_nan, float code_scale,
                                             float code_offset)
{
    long long p = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (p >= n_pixels) return;
    float L[V][XRAY_MAX_LAG_TERMS];
    float a[V][XRAY_MAX_LAG_TERMS];
    float r[XRAY_MAX_LAG_TERMS];
#pragma unroll
    for (int i = 0; i < XRAY_MAX_LAG_TERMS; ++i) {
        bool on = i < n_terms;
        xray_pack<float, V> s{}, am{};
        if (on) s = xray_load<float, V>(state, (long long)i * n_pixels + p);
        if (on && amps_per_pixel) am = xray_load<float, V>(amps, (long long)i * n_pixels + p);
#pragma unroll
        for (int l = 0; l < V; ++l) {
            L[l][i] = on ? s.v[l] : 0.0f;
            a[l][i] = on ? (amps_per_pixel ? am.v[l] : amps[i]) : 0.0f;
        }
        r[i] = on ? ratios[i] : 0.0f;
    }
    xray_pack<int, V> row;
    if (slot)
        row = xray_load<int, V>(slot, p);
    else
#pragma unroll
        for (int l = 0; l < V; ++l) row.v[l] = -1;
    const xray_pack<float, V> d = xray_load<float, V>(dark, p), g = xray_load<float, V>(inv, p);
    for (int k0 = 0; k0 < n_frames; k0 += XRAY_FRAMES_IN_FLIGHT) {
        xray_pack<Tin, V> in[XRAY_FRAMES_IN_FLIGHT];
#if XRAY_PREFETCH_BAD
        float rep[XRAY_FRAMES_IN_FLIGHT][V];  // the replacement values of this thread's bad pixels
#endif
#pragma unroll
        for (int j = 0; j < XRAY_FRAMES_IN_FLIGHT; ++j)
            if (k0 + j < n_frames) {
                in[j] = xray_load<Tin, V>(raw, (long long)(k0 + j) * n_pixels + p);
#if XRAY_PREFETCH_BAD
#pragma unroll
                for (int l = 0; l < V; ++l)
                    rep[j][l] = row.v[l] >= 0 ? bad[(long long)(k0 + j) * n_bad + row.v[l]] : 0.0f;
#endif
            }
#pragma unroll
        for (int j = 0; j < XRAY_FRAMES_IN_FLIGHT; ++j) {
            if (k0 + j >= n_frames) break;
            xray_pack<Tout, V> o;
#pragma unroll
            for (int l = 0; l < V; ++l) {
                float x = (float)in[j].v[l];
#if XRAY_PREFETCH_BAD
                float v = row.v[l] >= 0 ? rep[j][l] : __fmul_rn(__fsub_rn(x, d.v[l]), g.v[l]);
#else
                float v = row.v[l] >= 0 ? bad[(long long)(k0 + j) * n_bad + row.v[l]]
                                        : __fmul_rn(__fsub_rn(x, d.v[l]), g.v[l]);
#endif
                float y = xray_lag_step<kFloatIn>(v, L[l], a[l], r, n_terms, nonfinite_to_nan);
                // false for a NaN threshold (check off); a bad pixel's own raw value never marks it
                if (row.v[l] < 0 && x >= saturation) y = xray_nan();
                o.v[l] = xray_out<kCode>(y, out, code_scale, code_offset);
            }
            xray_save<Tout, V>(out, (long long)(k0 + j) * n_pixels + p, o);
        }
    }
#pragma unroll
    for (int i = 0; i < XRAY_MAX_LAG_TERMS; ++i) {
        if (i >= n_terms) continue;
        xray_pack<float, V> s;
#pragma unroll
        for (int l = 0; l < V; ++l) s.v[l] = L[l][i];
        xray_save<float, V>(state, (long long)i * n_pixels + p, s);
    }
}

// The bad pixels' head values, one thread per (frame k, bad pixel b): bad[k * n_bad + b] = the median
// of the head values of row b of `neighbours` in frame k (see the top of the file).
template <typename Tin, int K>
__device__ __forceinline__ void xray_bad_heads(const Tin* __restrict__ raw, const float* __restrict__ dark,
                                               const float* __restrict__ inv, const int* __restrict__ neighbours,
                                               int k_max, int n_bad, int n_frames, long long n_pixels,
                                               float* __restrict__ bad)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_frames * n_bad) return;
    long long k = i / n_bad, b = i % n_bad;
    const Tin* frame = raw + k * n_pixels;
    const int* nb = neighbours + b * k_max;
    bad[i] = K > 0 ? xray_neighbour_median_k<Tin, (K > 0 ? K : 1)>(frame, dark, inv, nb, k_max)
                   : xray_neighbour_median(frame, dark, inv, nb, k_max);
}

// bad_heads_<in>: any table; _k8 and _k24: tables of at most 8 and 24 columns (isolated bad pixels find
// their good neighbours within radius 1, small clusters within 2), the median in registers.
#define XRAY_BAD_HEADS_KERNEL(NAME, TIN, K)                                                                   \
    extern "C" __global__ void NAME(const TIN* raw, const float* dark, const float* inv, const int* neighbours, \
                                    int k_max, int n_bad, int n_frames, long long n_pixels, float* bad)        \
    {                                                                                                          \
        xray_bad_heads<TIN, K>(raw, dark, inv, neighbours, k_max, n_bad, n_frames, n_pixels, bad);             \
    }

XRAY_BAD_HEADS_KERNEL(bad_heads_u16, unsigned short, 0)
XRAY_BAD_HEADS_KERNEL(bad_heads_u16_k8, unsigned short, 8)
XRAY_BAD_HEADS_KERNEL(bad_heads_u16_k24, unsigned short, 24)
XRAY_BAD_HEADS_KERNEL(bad_heads_f32, float, 0)
XRAY_BAD_HEADS_KERNEL(bad_heads_f32_k8, float, 8)
XRAY_BAD_HEADS_KERNEL(bad_heads_f32_k24, float, 24)

#define XRAY_CORRECT_KERNEL(NAME, TIN, TOUT, FLOAT_IN, CODE, V)                                                 \
    extern "C" __global__ void NAME(const TIN* raw, TOUT* out, float* state, const float* dark, const float* inv, \
                                    const int* slot, const float* bad, int n_bad, const float* amps,              \
                                    const float* ratios, int n_terms, int amps_per_pixel, int n_frames,          \
                                    long long n_pixels, float saturation, int nonfinite_to_nan,                  \
                                    float code_scale, float code_offset)                                         \
    {                                                                                                            \
        xray_correct<TIN, TOUT, FLOAT_IN, CODE, V>(raw, out, state, dark, inv, slot, bad, n_bad, amps, ratios,   \
                                                   n_terms, amps_per_pixel, n_frames, n_pixels, saturation,      \
                                                   nonfinite_to_nan, code_scale, code_offset);                   \
    }

// NAME: one pixel a thread (any frame size); NAME_v4: four (frame sizes a multiple of 4, aligned buffers).
#define XRAY_CORRECT_KERNELS(NAME, TIN, TOUT, FLOAT_IN, CODE)       \
    XRAY_CORRECT_KERNEL(NAME, TIN, TOUT, FLOAT_IN, CODE, 1)         \
    XRAY_CORRECT_KERNEL(NAME##_v4, TIN, TOUT, FLOAT_IN, CODE, 4)

XRAY_CORRECT_KERNELS(correct_u16_f32, unsigned short, float, false, false)
XRAY_CORRECT_KERNELS(correct_u16_f16, unsigned short, unsigned short, false, false)
XRAY_CORRECT_KERNELS(correct_u16_c16, unsigned short, unsigned short, false, true)
XRAY_CORRECT_KERNELS(correct_f32_f32, float, float, true, false)
XRAY_CORRECT_KERNELS(correct_f32_f16, float, unsigned short, true, false)
XRAY_CORRECT_KERNELS(correct_f32_c16, float, unsigned short, true, true)

// Saturated pixels to NaN after the stages that must see them unmasked (the denoisers run between
// the fused kernel and this, as in the CPU chain's tail): out[i] = NaN where float(raw[i]) >= saturation.
// raw and out hold n elements; the threshold is the fused kernel's (NaN: nothing to do).
template <typename Tin>
__device__ __forceinline__ void xray_saturate(const Tin* raw, float* out, long long n, float saturation)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && (float)raw[i] >= saturation) out[i] = xray_nan();
}

extern "C" __global__ void saturate_u16(const unsigned short* raw, float* out, long long n, float saturation)
{
    xray_saturate<unsigned short>(raw, out, n, saturation);
}

extern "C" __global__ void saturate_f32(const float* raw, float* out, long long n, float saturation)
{
    xray_saturate<float>(raw, out, n, saturation);
}

// The bad pixels' saturation (pipeline.ops.flatfield.saturation_mask): a replaced bad pixel is never
// saturated by its own raw value, but where more than half of the neighbours its median is taken over
// are: 2 * s > n, n the neighbours whose head value is not NaN (those xray_neighbour_median keeps),
// s those of them with float(raw) >= saturation. No sorting: two counts, no local array.
template <typename Tin>
__device__ __forceinline__ bool xray_bad_saturated(const Tin* frame, const float* dark, const float* inv,
                                                   const int* nb, int k_max, float saturation)
{
    int n = 0, s = 0;
    for (int j = 0; j < k_max; ++j) {
        int q = nb[j];
        if (q < 0) continue;
        float x = xray_head(frame, dark, inv, q);
        if (x != x) continue;  // NaN: not in the median, not counted
        ++n;
        s += (float)frame[q] >= saturation;
    }
    return 2 * s > n;
}

// saturate_good_<in>: saturate_<in> for chains with bad pixels: out[i] = NaN where float(raw[i]) >=
// saturation and pixel i % n_pixels is not a bad pixel (slot -1; slot NULL: every pixel is judged).
template <typename Tin>
__device__ __forceinline__ void xray_saturate_good(const Tin* raw, float* out, long long n, float saturation,
                                                   const int* slot, long long n_pixels)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && (float)raw[i] >= saturation && (!slot || slot[i % n_pixels] < 0)) out[i] = xray_nan();
}

extern "C" __global__ void saturate_good_u16(const unsigned short* raw, float* out, long long n, float saturation,
                                             const int* slot, long long n_pixels)
{
    xray_saturate_good<unsigned short>(raw, out, n, saturation, slot, n_pixels);
}

extern "C" __global__ void saturate_good_f32(const float* raw, float* out, long long n, float saturation,
                                             const int* slot, long long n_pixels)
{
    xray_saturate_good<float>(raw, out, n, saturation, slot, n_pixels);
}

// saturate_bad_<in>_<out>: one thread per (frame k, bad pixel b), after correct_* (or saturate_good_*):
// where xray_bad_saturated, the output of pixel targets[b] in frame k is NaN as the output type stores
// it (float32 NaN; float16 0x7E00; the uint16 code 0). targets (n_bad) int32: each bad pixel's flat index
// (row b of `neighbours`); the threshold is the fused kernel's (NaN: nothing is marked).
__device__ __forceinline__ void xray_nan_out(float* out, long long i, bool) { out[i] = xray_nan(); }
__device__ __forceinline__ void xray_nan_out(unsigned short* out, long long i, bool code)
{
    out[i] = code ? (unsigned short)0 : (unsigned short)0x7e00;
}

template <typename Tin, typename Tout, bool kCode>
__device__ __forceinline__ void xray_saturate_bad(const Tin* __restrict__ raw, Tout* __restrict__ out,
                                                  const float* __restrict__ dark, const float* __restrict__ inv,
                                                  const int* __restrict__ neighbours, const int* __restrict__ targets,
                                                  int k_max, int n_bad, int n_frames, long long n_pixels,
                                                  float saturation)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_frames * n_bad) return;
    long long k = i / n_bad, b = i % n_bad;
    if (xray_bad_saturated(raw + k * n_pixels, dark, inv, neighbours + b * k_max, k_max, saturation))
        xray_nan_out(out, k * n_pixels + targets[b], kCode);
}

extern "C" __global__ void saturate_bad_u16_f32(const unsigned short* raw, float* out, const float* dark,
                                                const float* inv, const int* neighbours, const int* targets, int k_max,
                                                int n_bad, int n_frames, long long n_pixels, float saturation)
{
    xray_saturate_bad<unsigned short, float, false>(raw, out, dark, inv, neighbours, targets, k_max, n_bad, n_frames,
                                                    n_pixels, saturation);
}

extern "C" __global__ void saturate_bad_u16_f16(const unsigned short* raw, unsigned short* out, const float* dark,
                                                const float* inv, const int* neighbours, const int* targets, int k_max,
                                                int n_bad, int n_frames, long long n_pixels, float saturation)
{
    xray_saturate_bad<unsigned short, unsigned short, false>(raw, out, dark, inv, neighbours, targets, k_max, n_bad,
                                                             n_frames, n_pixels, saturation);
}

extern "C" __global__ void saturate_bad_u16_c16(const unsigned short* raw, unsigned short* out, const float* dark,
                                                const float* inv, const int* neighbours, const int* targets, int k_max,
                                                int n_bad, int n_frames, long long n_pixels, float saturation)
{
    xray_saturate_bad<unsigned short, unsigned short, true>(raw, out, dark, inv, neighbours, targets, k_max, n_bad,
                                                            n_frames, n_pixels, saturation);
}

extern "C" __global__ void saturate_bad_f32_f32(const float* raw, float* out, const float* dark, const float* inv,
                                                const int* neighbours, const int* targets, int k_max, int n_bad,
                                                int n_frames, long long n_pixels, float saturation)
{
    xray_saturate_bad<float, float, false>(raw, out, dark, inv, neighbours, targets, k_max, n_bad, n_frames, n_pixels,
                                           saturation);
}

extern "C" __global__ void saturate_bad_f32_f16(const float* raw, unsigned short* out, const float* dark,
                                                const float* inv, const int* neighbours, const int* targets, int k_max,
                                                int n_bad, int n_frames, long long n_pixels, float saturation)
{
    xray_saturate_bad<float, unsigned short, false>(raw, out, dark, inv, neighbours, targets, k_max, n_bad, n_frames,
                                                    n_pixels, saturation);
}

extern "C" __global__ void saturate_bad_f32_c16(const float* raw, unsigned short* out, const float* dark,
                                                const float* inv, const int* neighbours, const int* targets, int k_max,
                                                int n_bad, int n_frames, long long n_pixels, float saturation)
{
    xray_saturate_bad<float, unsigned short, true>(raw, out, dark, inv, neighbours, targets, k_max, n_bad, n_frames,
                                                   n_pixels, saturation);
}
