// Encoder-only benchmark: encode one synthetic WxH image N times, print ms per run,
// optionally dump the embeddings of the last run (raw float32) for bit-for-bit comparison.
#include "llama.h"
#include "mtmd.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <map>
#include <sys/resource.h>
#include <string>

// per-op time profile (PROFILE=1): the scheduler calls back after each node
static std::map<std::string, double> g_prof;
static double cpu_ms() {
    rusage u; getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}
static std::chrono::steady_clock::time_point g_last;
static bool prof_cb(struct ggml_tensor * t, bool ask, void *) {
    if (ask) return true;
    auto now = std::chrono::steady_clock::now();
    std::string k = ggml_op_desc(t);
    if (t->op == GGML_OP_FLASH_ATTN_EXT || t->op == GGML_OP_SOFT_MAX) {
        const ggml_tensor * m = t->op == GGML_OP_FLASH_ATTN_EXT ? t->src[3] : t->src[1];
        k += m == nullptr ? (t->src[0]->ne[3] > 1 ? "(windows,no mask)" : "(full)") : (m->ne[3] > 1 ? "(windows,pad mask)" : "(dense mask)");
    }
    g_prof[k] += std::chrono::duration<double, std::milli>(now - g_last).count();
    g_last = now;
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: %s mmproj text W H runs fa(0/1) threads [dump.bin]\n", argv[0]);
        return 2;
    }
    const char * mmproj = argv[1];
    const char * text = argv[2];
    const int W = atoi(argv[3]), H = atoi(argv[4]), runs = atoi(argv[5]);
    const int fa = atoi(argv[6]), threads = atoi(argv[7]);
    const char * dump = argc > 8 ? argv[8] : nullptr;

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(text, mp);
    if (!model) { fprintf(stderr, "text model load failed\n"); return 1; }

    mtmd_context_params cp = mtmd_context_params_default();
    cp.use_gpu = false;
    cp.print_timings = false;
    cp.n_threads = threads;
    cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.warmup = false;
    cp.image_min_tokens = 4;
    cp.image_max_tokens = 16384;
    const bool prof = getenv("PROFILE") != nullptr;
    if (prof) { cp.cb_eval = prof_cb; cp.cb_eval_user_data = nullptr; }
    mtmd_context * ctx = mtmd_init_from_file(mmproj, model, cp);
    if (!ctx) { fprintf(stderr, "mtmd init failed\n"); return 1; }

    std::vector<unsigned char> px((size_t) W * H * 3);
    uint32_t s = 12345;
    for (auto & p : px) { s = s * 1664525u + 1013904223u; p = (unsigned char) (s >> 24); }
    mtmd_bitmap * bmp = mtmd_bitmap_init(W, H, px.data());

    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    mtmd_input_text t = { mtmd_default_marker(), strlen(mtmd_default_marker()), false, true };
    const mtmd_bitmap * bmps[1] = { bmp };
    if (mtmd_tokenize(ctx, chunks, &t, bmps, 1) != 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
    const mtmd_input_chunk * img = nullptr;
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++) {
        const mtmd_input_chunk * c = mtmd_input_chunks_get(chunks, i);
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_IMAGE) img = c;
    }
    if (!img) { fprintf(stderr, "no image chunk\n"); return 1; }
    const size_t n_tok = mtmd_input_chunk_get_n_tokens(img);
    int n_embd = llama_model_n_embd_inp(model); if (n_embd <= 0) n_embd = 3584; fprintf(stderr, "n_embd=%d\n", n_embd);
    printf("{\"w\":%d,\"h\":%d,\"tokens\":%zu,\"patches\":%zu,\"fa\":%d,\"ms\":[", W, H, n_tok, n_tok * 4, fa);
    std::vector<double> cpu;
    for (int r = 0; r < runs; r++) {
        const double c0 = cpu_ms();
        auto t0 = std::chrono::steady_clock::now();
        g_last = t0; g_prof.clear();
        if (mtmd_encode_chunk(ctx, img) != 0) { fprintf(stderr, "encode failed\n"); return 1; }
        auto t1 = std::chrono::steady_clock::now();
        cpu.push_back(cpu_ms() - c0);
        printf("%s%.1f", r ? "," : "", std::chrono::duration<double, std::milli>(t1 - t0).count());
        fflush(stdout);
    }
    printf("],\"cpu_ms\":[");
    for (size_t i = 0; i < cpu.size(); i++) printf("%s%.1f", i ? "," : "", cpu[i]);
    printf("]");
    if (prof) {
        printf(",\"profile_ms\":{");
        bool first = true;
        for (auto & kv : g_prof) { printf("%s\"%s\":%.1f", first ? "" : ",", kv.first.c_str(), kv.second); first = false; }
        printf("}");
    }
    { rusage u; getrusage(RUSAGE_SELF, &u); printf(",\"maxrss_mb\":%.0f", u.ru_maxrss / 1024.0); }
    printf("}\n");
    if (dump) {
        FILE * f = fopen(dump, "wb");
        fwrite(mtmd_get_output_embd(ctx), sizeof(float), n_tok * n_embd, f);
        fclose(f);
    }
    mtmd_input_chunks_free(chunks);
    mtmd_bitmap_free(bmp);
    mtmd_free(ctx);
    llama_model_free(model);
    return 0;
}
