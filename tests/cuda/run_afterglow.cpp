// Runs cuda/afterglow.cu's kernel under emulation on raw float32 files.
// usage: run_afterglow T P N per_pixel y.bin state.bin amps.bin ratios.bin x_out.bin state_out.bin
#include "emulate.h"
#include "../../cuda/afterglow.cu"

#include <cstdio>
#include <cstdlib>
#include <vector>

static std::vector<float> load(const char* path, size_t n) {
    std::vector<float> v(n);
    FILE* f = std::fopen(path, "rb");
    if (!f || std::fread(v.data(), sizeof(float), n, f) != n) { std::perror(path); std::exit(2); }
    std::fclose(f);
    return v;
}

static void save(const char* path, const std::vector<float>& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f || std::fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) { std::perror(path); std::exit(2); }
    std::fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 11) { std::fprintf(stderr, "bad arguments\n"); return 2; }
    int T = std::atoi(argv[1]), N = std::atoi(argv[3]), per_pixel = std::atoi(argv[4]);
    long long P = std::atoll(argv[2]);
    auto y = load(argv[5], (size_t)T * P);
    auto state = load(argv[6], (size_t)N * P);
    auto amps = load(argv[7], per_pixel ? (size_t)N * P : (size_t)N);
    auto ratios = load(argv[8], (size_t)N);
    std::vector<float> x(y.size());
    unsigned block = 64, grid = (unsigned)((P + block - 1) / block);
    xray_launch(grid, block, remove_lag_f32, (const float*)y.data(), x.data(), state.data(),
                (const float*)amps.data(), (const float*)ratios.data(), N, T, P, per_pixel);
    save(argv[9], x);
    save(argv[10], state);
    return 0;
}
