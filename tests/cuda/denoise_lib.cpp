// cuda/denoise.cu's kernels under emulation, as a shared library: launch_<kernel>(grid, block, args...)
// runs the kernel over the grid, as CuPy's launch of it would (tests/cuda/test_denoise_emulated.py
// calls these through ctypes from pipeline.kernels' own host code).
#include "emulate.h"
#include "../../cuda/denoise.cu"

extern "C" {
void launch_temporal_step_f32(unsigned grid, unsigned block, const float* y, const float* x_prev, float* k_prev,
                              float* x_next, float* out_prev, int h, int w, int smooth, float alpha, float beta,
                              float infl, float gmin, float lo, float span, float hold)
{
    xray_launch(grid, block, temporal_step_f32, y, x_prev, k_prev, x_next, out_prev, h, w, smooth, alpha, beta, infl,
                gmin, lo, span, hold);
}

void launch_nl_means_f32(unsigned grid, unsigned block, const float* f, float* out, int h, int w, int r, int patch,
                         float inv_h2, float sig2)
{
    xray_launch(grid, block, nl_means_f32, f, out, h, w, r, patch, inv_h2, sig2);
}

void launch_guided_colsum_f32(unsigned grid, unsigned block, const float* x, double* s1, double* s2, int h, int w,
                              int r, int mode, float k, float c, float alpha)
{
    xray_launch(grid, block, guided_colsum_f32, x, s1, s2, h, w, r, mode, k, c, alpha);
}

void launch_guided_coef_f32(unsigned grid, unsigned block, const double* s1, const double* s2, float* a, float* b,
                            int h, int w, int r, double eps, double scale)
{
    xray_launch(grid, block, guided_coef_f32, s1, s2, a, b, h, w, r, eps, scale);
}

void launch_guided_colsum_ab_f32(unsigned grid, unsigned block, const float* a, const float* b, double* s1,
                                 double* s2, int h, int w, int r)
{
    xray_launch(grid, block, guided_colsum_ab_f32, a, b, s1, s2, h, w, r);
}

void launch_guided_apply_f32(unsigned grid, unsigned block, const float* x, const double* s1, const double* s2,
                             float* out, int h, int w, int r, double scale, int mode, float k, float c, float alpha,
                             float ib)
{
    xray_launch(grid, block, guided_apply_f32, x, s1, s2, out, h, w, r, scale, mode, k, c, alpha, ib);
}

#define XRAY_NLM_LAUNCHER(P)                                                                                      \
    void launch_nl_means_f32_p##P(unsigned grid, unsigned block, const float* f, float* out, int h, int w, int r, \
                                  int patch, float inv_h2, float sig2)                                            \
    {                                                                                                             \
        xray_launch(grid, block, nl_means_f32_p##P, f, out, h, w, r, patch, inv_h2, sig2);                        \
    }

XRAY_NLM_LAUNCHER(3)
XRAY_NLM_LAUNCHER(5)
XRAY_NLM_LAUNCHER(7)
}
