// One vision attention layer of the Qwen2.5-VL 7B encoder (d_head 80, 16 heads), as the clip graph
// builds it: dense n x n window mask (unpatched) vs windows batched on dim 3 (patched), with and
// without flash attention; plus the full-attention layer. Prints ms per variant, alternating.
#include "ggml.h"
#include "ggml-cpu.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <limits>
#include <algorithm>
#include <cmath>
#include <sys/resource.h>
static double cpu_ms() { rusage u; getrusage(RUSAGE_SELF, &u); return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3; }
static double g_cpu;

static const int D = 80, H = 16, L = 64;

static double run(int n, int variant, bool fa, int threads) {
    // variant: 0 dense mask, 1 windowed, 2 full attention (no mask)
    const int W = n / L;
    size_t mem = (size_t) 64 * n * D * H * 4 + (size_t) 3 * n * n * 4 + (size_t) (fa ? 0 : 2) * (size_t) n * (variant == 1 ? L : n) * H * 4 + (256u << 20);
    ggml_init_params ip = { mem, nullptr, false };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * Q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, n);
    ggml_tensor * K = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, n);
    ggml_tensor * V = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, n);
    for (ggml_tensor * t : {Q, K, V}) {
        float * p = (float *) t->data; uint32_t s = 7;
        for (int64_t i = 0; i < ggml_nelements(t); i++) { s = s * 1664525u + 1013904223u; p[i] = ((s >> 8) / 16777216.0f - 0.5f); }
    }
    ggml_tensor * mask = nullptr;
    double host_ms = 0;
    if (variant == 0) {
        auto h0 = std::chrono::steady_clock::now();
        // host side, as clip.cpp: n*n floats, block diagonal zeros
        std::vector<float> m((size_t) n * n, std::numeric_limits<float>::lowest());
        for (int r = 0; r < n; r++) std::fill(m.begin() + (size_t) r * n + (r / L) * L, m.begin() + (size_t) r * n + (r / L) * L + L, 0.0f);
        mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, n);
        memcpy(mask->data, m.data(), m.size() * 4);
        host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count();
        if (fa) { // qwen2vl.cpp casts once per graph: do it outside the per-layer timing
            ggml_tensor * m16 = ggml_cast(ctx, mask, GGML_TYPE_F16);
            ggml_cgraph * g0 = ggml_new_graph(ctx);
            ggml_build_forward_expand(g0, m16);
            auto c0 = std::chrono::steady_clock::now();
            ggml_graph_compute_with_ctx(ctx, g0, threads);
            host_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c0).count();
            mask = m16;
        }
        fprintf(stderr, "once-per-encode mask cost (host fill + copy + f16 cast): %.1f ms\n", host_ms);
    }
    auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_ms();
    ggml_tensor * q = Q, * k = K, * v = V;
    if (variant == 1) {
        q = ggml_reshape_4d(ctx, Q, D, H, L, W); k = ggml_reshape_4d(ctx, K, D, H, L, W); v = ggml_reshape_4d(ctx, V, D, H, L, W);
    }
    // build_attn
    ggml_tensor * qp = ggml_permute(ctx, q, 0, 2, 1, 3);
    ggml_tensor * kp = ggml_permute(ctx, k, 0, 2, 1, 3);
    ggml_tensor * cur;
    const float scale = 1.0f / sqrtf((float) D);
    if (fa) {
        ggml_tensor * vp = ggml_permute(ctx, v, 0, 2, 1, 3);
        kp = ggml_cast(ctx, kp, GGML_TYPE_F16);
        vp = ggml_cast(ctx, vp, GGML_TYPE_F16);
        if (mask) mask = ggml_cast(ctx, mask, GGML_TYPE_F16);
        cur = ggml_flash_attn_ext(ctx, qp, kp, vp, mask, scale, 0.0f, 0.0f);
        ggml_prec_set_acc(cur, GGML_PREC_F32);
        cur = ggml_reshape_2d(ctx, cur, cur->ne[0] * cur->ne[1], cur->ne[2] * cur->ne[3]);
    } else {
        ggml_tensor * vp = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));
        ggml_tensor * kq = ggml_mul_mat(ctx, kp, qp);
        kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);
        ggml_tensor * kqv = ggml_mul_mat(ctx, vp, kq);
        cur = ggml_permute(ctx, kqv, 0, 2, 1, 3);
        cur = ggml_cont_2d(ctx, cur, cur->ne[0] * cur->ne[1], cur->ne[2] * cur->ne[3]);
    }
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, cur);
    ggml_graph_compute_with_ctx(ctx, gf, threads);
    auto t1 = std::chrono::steady_clock::now();
    g_cpu = cpu_ms() - c0;
    ggml_free(ctx);
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

int main(int argc, char ** argv) {
    const int n = atoi(argv[1]), reps = atoi(argv[2]), fa = atoi(argv[3]), threads = atoi(argv[4]);
    const int with_full = argc > 5 ? atoi(argv[5]) : 1;
    printf("{\"n\":%d,\"fa\":%d", n, fa);
    std::vector<double> t[3], c[3];
    for (int r = 0; r < reps; r++) {
        for (int v = 0; v < (with_full ? 3 : 2); v++) {
            int vv = (r % 2) ? (v == 0 ? 1 : v == 1 ? 0 : 2) : v; // alternate order
            t[vv].push_back(run(n, vv, fa, threads));
            c[vv].push_back(g_cpu);
        }
    }
    const char * names[3] = {"dense_mask", "windowed", "full"};
    for (int v = 0; v < 3; v++) {
        if (t[v].empty()) continue;
        printf(",\"%s\":[", names[v]);
        for (size_t i = 0; i < t[v].size(); i++) printf("%s%.1f", i ? "," : "", t[v][i]);
        printf("],\"%s_cpu\":[", names[v]);
        for (size_t i = 0; i < c[v].size(); i++) printf("%s%.1f", i ? "," : "", c[v][i]);
        printf("]");
    }
    printf("}\n");
    return 0;
}
