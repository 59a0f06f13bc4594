// Runs cuda/correct.cu's kernels under emulation on raw binary files in a folder.
//
// usage: run_correct DIR IN OUT T P N per_pixel k_max n_bad saturation nonfinite_to_nan code_scale code_offset lanes
//   lanes: 1 (correct_*) or 4 (correct_*_v4: P a multiple of 4).
//   IN: u16 | f32, OUT: f32 | f16 | c16 (the uint16 code); saturation: a decimal float ("nan": no check).
//   DIR holds raw.bin (T*P IN), dark.bin, inv.bin (P float32), slot.bin (P int32, read when n_bad > 0),
//   nb.bin (n_bad*k_max int32), amps.bin (N or N*P float32), ratios.bin (N float32), state.bin (N*P float32);
//   writes out.bin (T*P OUT) and state_out.bin (N*P float32). Launches as pipeline.kernels.CorrectKernel:
//   bad_heads_* (n_bad > 0), correct_*, then saturate_bad_* (n_bad > 0 and a saturation level).
// usage: run_correct --half IN_F32 OUT_U16   (float32 -> float16 bits with xray_f2h, for the conversion test)
// usage: run_correct --code IN_F32 OUT_U16 SCALE OFFSET   (float32 -> uint16 code with xray_code)
#include "emulate.h"
#include "../../cuda/correct.cu"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

template <class T>
static std::vector<T> load(const std::string& path, size_t n) {
    std::vector<T> v(n);
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f || (n && std::fread(v.data(), sizeof(T), n, f) != n)) { std::perror(path.c_str()); std::exit(2); }
    std::fclose(f);
    return v;
}

template <class T>
static void save(const std::string& path, const std::vector<T>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || (v.size() && std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size())) {
        std::perror(path.c_str());
        std::exit(2);
    }
    std::fclose(f);
}

static size_t file_size(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) { std::perror(path.c_str()); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    long n = std::ftell(f);
    std::fclose(f);
    return (size_t)n;
}

template <class Tin, class Tout, class Heads, class Kernel, class SatBad>
static void run(Heads heads, Kernel kernel, SatBad sat_bad, const std::string& dir, int T, long long P, int N, int per_pixel, int k_max, int n_bad,
                float saturation, int nonfinite, float scale, float offset, int lanes) {
    auto raw = load<Tin>(dir + "/raw.bin", (size_t)T * P);
    auto dark = load<float>(dir + "/dark.bin", (size_t)P);
    auto inv = load<float>(dir + "/inv.bin", (size_t)P);
    std::vector<int> slot, nb;
    if (n_bad > 0) {
        slot = load<int>(dir + "/slot.bin", (size_t)P);
        nb = load<int>(dir + "/nb.bin", (size_t)n_bad * k_max);
    }
    auto amps = load<float>(dir + "/amps.bin", per_pixel ? (size_t)N * P : (size_t)N);
    auto ratios = load<float>(dir + "/ratios.bin", (size_t)N);
    auto state = load<float>(dir + "/state.bin", (size_t)N * P);
    std::vector<Tout> out((size_t)T * P);
    const int* slot_p = n_bad > 0 ? slot.data() : nullptr;
    std::vector<float> bad((size_t)T * (n_bad > 0 ? n_bad : 1));
    unsigned block = 64, grid = (unsigned)((P / lanes + block - 1) / block);
    // as pipeline.kernels.CorrectKernel: the bad pixels' values first, then the main kernel, then (with a
    // saturation level) the bad pixels' saturation, judged by their neighbours
    if (n_bad > 0) {
        unsigned grid_bad = (unsigned)(((long long)T * n_bad + block - 1) / block);
        xray_launch(grid_bad, block, heads, (const Tin*)raw.data(), (const float*)dark.data(),
                    (const float*)inv.data(), (const int*)nb.data(), k_max, n_bad, T, P, bad.data());
    }
    xray_launch(grid, block, kernel, (const Tin*)raw.data(), out.data(), state.data(), (const float*)dark.data(),
                (const float*)inv.data(), slot_p, (const float*)bad.data(), n_bad, (const float*)amps.data(),
                (const float*)ratios.data(), N, per_pixel, T, P, saturation, nonfinite, scale, offset);
    if (n_bad > 0 && saturation == saturation) {  // then the bad pixels' saturation by their neighbours
        std::vector<int> targets((size_t)n_bad, -1);
        for (long long p = 0; p < P; ++p)
            if (slot[p] >= 0) targets[slot[p]] = (int)p;
        unsigned grid_bad = (unsigned)(((long long)T * n_bad + block - 1) / block);
        xray_launch(grid_bad, block, sat_bad, (const Tin*)raw.data(), out.data(), (const float*)dark.data(),
                    (const float*)inv.data(), (const int*)nb.data(), (const int*)targets.data(), k_max, n_bad, T, P,
                    saturation);
    }
    save(dir + "/out.bin", out);
    save(dir + "/state_out.bin", state);
}

int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "--half") {
        size_t n = file_size(argv[2]) / sizeof(float);
        auto v = load<float>(argv[2], n);
        std::vector<unsigned short> h(n);
        for (size_t i = 0; i < n; ++i) xray_store(h.data(), (long long)i, v[i]);
        save(argv[3], h);
        return 0;
    }
    if (argc == 6 && std::string(argv[1]) == "--code") {
        size_t n = file_size(argv[2]) / sizeof(float);
        auto v = load<float>(argv[2], n);
        float scale = std::strtof(argv[4], nullptr), offset = std::strtof(argv[5], nullptr);
        std::vector<unsigned short> c(n);
        for (size_t i = 0; i < n; ++i) c[i] = xray_code(v[i], scale, offset);
        save(argv[3], c);
        return 0;
    }
    if (argc != 15) { std::fprintf(stderr, "bad arguments\n"); return 2; }
    std::string dir = argv[1], in = argv[2], out = argv[3];
    int T = std::atoi(argv[4]), N = std::atoi(argv[6]), per_pixel = std::atoi(argv[7]);
    long long P = std::atoll(argv[5]);
    int k_max = std::atoi(argv[8]), n_bad = std::atoi(argv[9]), nonfinite = std::atoi(argv[11]);
    float saturation = std::strtof(argv[10], nullptr);
    float scale = std::strtof(argv[12], nullptr), offset = std::strtof(argv[13], nullptr);
    int lanes = std::atoi(argv[14]);
    if (lanes != 1 && (lanes != 4 || P % 4)) { std::fprintf(stderr, "bad lanes\n"); return 2; }
    const bool v4 = lanes == 4;
    if (in == "u16" && out == "f32")
        run<unsigned short, float>((k_max <= 8 ? bad_heads_u16_k8 : k_max <= 24 ? bad_heads_u16_k24 : bad_heads_u16), v4 ? correct_u16_f32_v4 : correct_u16_f32, saturate_bad_u16_f32, dir, T, P, N, per_pixel, k_max, n_bad, saturation, nonfinite, scale, offset, lanes);
    else if (in == "u16" && out == "f16")
        run<unsigned short, unsigned short>((k_max <= 8 ? bad_heads_u16_k8 : k_max <= 24 ? bad_heads_u16_k24 : bad_heads_u16), v4 ? correct_u16_f16_v4 : correct_u16_f16, saturate_bad_u16_f16, dir, T, P, N, per_pixel, k_max, n_bad, saturation,
                                            nonfinite, scale, offset, lanes);
    else if (in == "f32" && out == "f32")
        run<float, float>((k_max <= 8 ? bad_heads_f32_k8 : k_max <= 24 ? bad_heads_f32_k24 : bad_heads_f32), v4 ? correct_f32_f32_v4 : correct_f32_f32, saturate_bad_f32_f32, dir, T, P, N, per_pixel, k_max, n_bad, saturation, nonfinite, scale, offset, lanes);
    else if (in == "f32" && out == "f16")
        run<float, unsigned short>((k_max <= 8 ? bad_heads_f32_k8 : k_max <= 24 ? bad_heads_f32_k24 : bad_heads_f32), v4 ? correct_f32_f16_v4 : correct_f32_f16, saturate_bad_f32_f16, dir, T, P, N, per_pixel, k_max, n_bad, saturation, nonfinite, scale, offset, lanes);
    else if (in == "u16" && out == "c16")
        run<unsigned short, unsigned short>((k_max <= 8 ? bad_heads_u16_k8 : k_max <= 24 ? bad_heads_u16_k24 : bad_heads_u16), v4 ? correct_u16_c16_v4 : correct_u16_c16, saturate_bad_u16_c16, dir, T, P, N, per_pixel, k_max, n_bad,
                                            saturation, nonfinite, scale, offset, lanes);
    else if (in == "f32" && out == "c16")
        run<float, unsigned short>((k_max <= 8 ? bad_heads_f32_k8 : k_max <= 24 ? bad_heads_f32_k24 : bad_heads_f32), v4 ? correct_f32_c16_v4 : correct_f32_c16, saturate_bad_f32_c16, dir, T, P, N, per_pixel, k_max, n_bad, saturation,
                                   nonfinite, scale, offset, lanes);
    else { std::fprintf(stderr, "bad dtypes\n"); return 2; }
    return 0;
}
