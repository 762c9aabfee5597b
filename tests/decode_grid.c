/*
 * decode_grid.c - see decode_grid.h.
 */
#include "decode_grid.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct budget {
    int64_t row_tokens; /* sum over sequences of (s_q * h_q) * length */
    int64_t max_tokens; /* total tokens of one case (cache memory) */
    int32_t long_len;   /* the long-split special cases */
} budget;

/* CPU thread counts of the cases: the CPU test keeps one handle for each */
static const int threads[] = {1, 2, 3, 8};

static budget budget_for(int size)
{
    if (size == 1)
        return (budget){30000, 2000, 3000};
    if (size == 2)
        return (budget){4000000, 100000, 200000};
    return (budget){400000, 20000, 40000};
}

static dg_case *add(dg_list *l, const char *tag, int32_t batch)
{
    l->cases = realloc(l->cases, sizeof(dg_case) * (size_t)(l->n + 1));
    dg_case *c = &l->cases[l->n++];
    memset(c, 0, sizeof *c);
    snprintf(c->tag, sizeof c->tag, "%s", tag);
    c->lens = calloc((size_t)batch, sizeof(int32_t));
    c->desc.batch = batch;
    c->desc.lengths = c->lens;
    c->desc.num_heads_kv = 1;
    c->desc.seqlen_q = 1;
    c->desc.page_size = 64;
    c->desc.dtype = ETAP_DTYPE_BF16;
    c->num_threads = 2;
    return c;
}

/* Scales lengths down (keeping zeros zero and others >= 1) until their sum fits. */
static void fit(int32_t *lens, int32_t b, int64_t max_total)
{
    int64_t sum = 0;
    for (int32_t i = 0; i < b; i++)
        sum += lens[i];
    if (sum <= max_total || sum == 0)
        return;
    double f = (double)max_total / (double)sum;
    for (int32_t i = 0; i < b; i++)
        if (lens[i] > 0) {
            int32_t v = (int32_t)((double)lens[i] * f);
            lens[i] = v < 1 ? 1 : v;
        }
}

enum { P_VARLEN, P_BELOW_SQ, P_LONG_SPLIT, P_MANY_SHORT, P_MEDIUM, P_SINGLE, NUM_PROFILES };
static const char *profile_name[] = {"varlen", "below-sq", "long-split", "many-short", "medium",
                                     "single"};

/* Lengths of a profile for a total of at most `total` tokens. */
static int32_t profile_lengths(dg_list *l, tu_rng *r, int p, int32_t sq, int64_t total,
                               dg_case **out)
{
    int32_t b;
    switch (p) {
    case P_VARLEN: b = (int32_t)tu_rng_range(r, 6, 10); break;
    case P_BELOW_SQ: b = 5; break;
    case P_LONG_SPLIT: b = (int32_t)tu_rng_range(r, 1, 2); break;
    case P_MANY_SHORT: b = (int32_t)tu_rng_range(r, 64, 96); break;
    case P_MEDIUM: b = (int32_t)tu_rng_range(r, 3, 5); break;
    default: b = 1; break;
    }
    dg_case *c = add(l, "grid", b);
    int32_t *len = c->lens;
    const int32_t special[] = {0, 1, 63, 64, 65, 127, 129, 200, 0, 1000};
    for (int32_t i = 0; i < b; i++) {
        switch (p) {
        case P_VARLEN:
            len[i] = i == 0 ? sq - 1 : special[tu_rng_range(r, 0, 9)];
            if (i == b - 1)
                len[i] = (int32_t)tu_rng_range(r, 1, total / 2 > 1 ? total / 2 : 1);
            break;
        case P_BELOW_SQ: len[i] = (int32_t)tu_rng_range(r, 0, sq + 1); break;
        case P_LONG_SPLIT: {
            int64_t each = total / b;
            int64_t v = each - tu_rng_range(r, 1, 63);
            len[i] = (int32_t)(v < 1 ? 1 : v);
            break;
        }
        case P_MANY_SHORT:
            len[i] = tu_rng_uniform(r) < 0.2 ? 0 : (int32_t)tu_rng_range(r, 1, 60);
            break;
        case P_MEDIUM: len[i] = (int32_t)tu_rng_range(r, 1, total / b > 1 ? total / b : 1); break;
        default: len[i] = (int32_t)tu_rng_range(r, 1, total < 300 ? total : 300); break;
        }
    }
    fit(len, b, total);
    *out = c;
    return b;
}

void dg_build(dg_list *l, int size, int for_cuda, uint64_t seed)
{
    memset(l, 0, sizeof *l);
    budget bud = budget_for(size);
    tu_rng r;
    tu_rng_seed(&r, seed);
    const int32_t pages[] = {1, 16, 64, 128};
    const float scales[] = {ETAP_SOFTMAX_SCALE_DEFAULT, 1.0f / 24.0f, 0.3f, 0.05f, 1.0f};
    const int32_t heads[] = {1, 8, 16, 32, 64, 128};
    const int32_t sqc[][2] = {{1, 0}, {2, 0}, {2, 1}, {4, 0}, {4, 1}};
    int idx = 0;

    for (int dt = 0; dt < 2; dt++)
        for (int k = 0; k < 5; k++)
            for (int hi = 0; hi < 6; hi++)
                for (int32_t hkv = 1; hkv <= 2; hkv++) {
                    int32_t hq = heads[hi], sq = sqc[k][0];
                    if (hq % hkv)
                        continue;
                    int p = (idx * 5) % NUM_PROFILES;
                    int64_t total = bud.row_tokens / ((int64_t)sq * hq);
                    if (total > bud.max_tokens)
                        total = bud.max_tokens;
                    if (total < 8)
                        total = 8;
                    dg_case *c;
                    profile_lengths(l, &r, p, sq, total, &c);
                    snprintf(c->tag, sizeof c->tag, "grid/%s", profile_name[p]);
                    tu_case_desc *d = &c->desc;
                    d->seqlen_q = sq;
                    d->causal = sqc[k][1];
                    d->num_heads_q = hq;
                    d->num_heads_kv = hkv;
                    d->page_size = pages[(idx + idx / 4) % 4];
                    d->dtype = dt ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
                    d->softmax_scale = scales[(idx + idx / 5) % 5];
                    d->q_layout = (idx / 2) % 3;
                    d->out_padded = (idx / 3) % 2;
                    d->kv_padded = (idx / 5) % 2;
                    d->pad_unit = for_cuda ? 8 : (idx % 2 ? 1 : 8);
                    d->extra_pages = idx % 4;
                    d->extra_table_cols = idx % 3;
                    d->table_stride_pad = (idx / 3) % 2;
                    d->seed = seed + 7919u * (uint64_t)idx;
                    c->num_threads = threads[(idx / 3) % 4];
                    /* a long sequence is only "split across many workers" with several */
                    if (p == P_LONG_SPLIT && c->num_threads == 1)
                        c->num_threads = 8;
                    idx++;
                }

    /* CUDA: the page sizes it refuses (not a multiple of 64) are kept, to check the
     * refusal, and each such point is repeated with page size 64 for its numerics */
    if (for_cuda) {
        int grid_n = l->n;
        for (int i = 0; i < grid_n; i++) {
            if (l->cases[i].desc.page_size % 64 == 0)
                continue;
            dg_case *src = &l->cases[i];
            int32_t b = src->desc.batch;
            dg_case *cp = add(l, "", b);
            src = &l->cases[i]; /* add() may move the array */
            int32_t *lens = cp->lens;
            *cp = *src;
            cp->lens = lens;
            memcpy(lens, src->lens, sizeof(int32_t) * (size_t)b);
            cp->desc.lengths = lens;
            cp->desc.page_size = 64;
            cp->desc.seed = src->desc.seed + 1;
            snprintf(cp->tag, sizeof cp->tag, "%.32s/page64", src->tag);
        }
        idx = l->n;
    }

    /* named special cases */
    dg_case *c;
    int32_t L = bud.long_len;
    c = add(l, "long-split", 1);
    c->lens[0] = L - 17;
    c->desc.num_heads_q = 16;
    c->num_threads = 8;

    c = add(l, "long-split-mtp", 2);
    c->lens[0] = L / 4 + 5;
    c->lens[1] = L / 4 - 60;
    c->desc.dtype = ETAP_DTYPE_FP16;
    c->desc.seqlen_q = 2;
    c->desc.causal = 1;
    c->desc.num_heads_q = 16;
    c->desc.page_size = 16;
    c->num_threads = 3;

    c = add(l, "long-split-hq128", 1);
    c->lens[0] = L / 8 + 3;
    c->desc.num_heads_q = 128;
    c->num_threads = 8;

    int32_t nb = size == 1 ? 64 : 128;
    c = add(l, "many-short", nb);
    for (int32_t i = 0; i < nb; i++)
        c->lens[i] = tu_rng_uniform(&r) < 0.2 ? 0 : (int32_t)tu_rng_range(&r, 1, 80);
    c->desc.num_heads_q = 16;
    c->desc.out_padded = 1;
    c->num_threads = 2;

    nb = size == 1 ? 32 : 96;
    c = add(l, "many-short-hq128-mtp", nb);
    for (int32_t i = 0; i < nb; i++)
        c->lens[i] = (int32_t)tu_rng_range(&r, 0, 30);
    c->desc.dtype = ETAP_DTYPE_FP16;
    c->desc.seqlen_q = 2;
    c->desc.causal = 1;
    c->desc.num_heads_q = 128;
    c->num_threads = 3;

    c = add(l, "all-zero", 3);
    c->desc.seqlen_q = 2;
    c->desc.causal = 1;
    c->desc.num_heads_q = 16;

    c = add(l, "below-sq", 6);
    for (int32_t i = 0; i < 6; i++)
        c->lens[i] = i;
    c->desc.dtype = ETAP_DTYPE_FP16;
    c->desc.seqlen_q = 4;
    c->desc.causal = 1;
    c->desc.num_heads_q = 8;
    c->desc.num_heads_kv = 2;
    c->desc.page_size = 1;

    const float sc[] = {8.0f, 100.0f, 1e-4f};
    const char *scn[] = {"scale-peaky-8", "scale-huge-100", "scale-tiny-1e-4"};
    for (int i = 0; i < 3; i++)
        for (int dt = 0; dt < 2; dt++) {
            c = add(l, scn[i], 3);
            c->lens[0] = size == 1 ? 50 : 100;
            c->lens[1] = size == 1 ? 300 : 1000;
            c->lens[2] = 37;
            c->desc.num_heads_q = 16;
            c->desc.softmax_scale = sc[i];
            c->desc.dtype = dt ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
            c->num_threads = 3;
        }

    c = add(l, "big-values", 3);
    c->lens[0] = 200;
    c->lens[1] = 65;
    c->lens[2] = 1;
    c->desc.num_heads_q = 8;
    c->desc.q_std = 1.0;
    c->desc.kv_std = 2.0;

    c = add(l, "fp16-large-magnitude", 2);
    c->lens[0] = 150;
    c->lens[1] = 64;
    c->desc.dtype = ETAP_DTYPE_FP16;
    c->desc.num_heads_q = 8;
    c->desc.kv_std = 300.0;
    c->desc.softmax_scale = 1e-4f;

    /* Scores that move along each sequence, one case per consumer layout (16 rows, 32 rows,
     * 64 heads) and kind. Rising: the RoPE key columns' spread grows with the token index,
     * so a tile's max passes the running max by ~9 (log2 units) on most tiles and the CUDA
     * kernels rescale what they have accumulated (with flat scores they hardly ever do).
     * Spike: 16 rows in the middle of each sequence have RoPE keys with 4000 times the
     * spread, scores some hundreds of log2 units above the rest: the tile that holds them
     * must raise the references (kept, the weights would overflow to inf), and the tiles
     * after it keep them while their own weights underflow. The values stay in range. All
     * with 16 KV heads, so that the CUDA plan has 8 workers per KV head and pieces of several
     * tiles: with 132 workers these short sequences would be cut into one-tile pieces, and
     * only a piece's first tile (which trades its maxima anyway) would see the rise. */
    static const char *const moving[6] = {"rising-scores",      "rising-scores-32rows",
                                          "rising-scores-hq64", "mid-sequence-spike",
                                          "mid-sequence-spike-32rows", "mid-sequence-spike-hq64"};
    for (int i = 0; i < 6; i++) {
        const int spike = i >= 3, layout = i % 3, causal_rows = layout == 1 && !spike;
        c = add(l, moving[i], 3);
        c->lens[0] = spike ? (size == 1 ? 500 : 1000) : (size == 1 ? 400 : 900);
        c->lens[1] = spike ? 300 : 130;
        c->lens[2] = spike ? 70 : 64;
        c->desc.num_heads_kv = 16;
        /* 32 rows: s_q = 2 causal fp16 when rising, 32 heads when a spike */
        c->desc.num_heads_q = (layout == 2 ? 64 : layout == 1 && spike ? 32 : 16) * 16;
        c->desc.seqlen_q = causal_rows ? 2 : 1;
        c->desc.causal = causal_rows;
        c->desc.dtype = causal_rows ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
        if (spike)
            c->desc.kv_spike = 4000.0;
        else
            c->desc.kv_ramp = 2.0;
        c->num_threads = 3;
    }

    c = add(l, "group-size-1", 4);
    for (int32_t i = 0; i < 4; i++)
        c->lens[i] = 50 + 37 * i;
    c->desc.seqlen_q = 4;
    c->desc.num_heads_q = 2;
    c->desc.num_heads_kv = 2;
    c->desc.page_size = 128;

    c = add(l, "page-1-long", 2);
    c->lens[0] = size == 1 ? 700 : 3000;
    c->lens[1] = size == 1 ? 300 : 1001;
    c->desc.num_heads_q = 8;
    c->desc.page_size = 1;
    c->desc.kv_padded = 1;
    c->num_threads = 8;

    /* page sizes that are not powers of two (a "% page_size" done with a mask fails) */
    c = add(l, "page-7", 5);
    for (int32_t i = 0; i < 5; i++)
        c->lens[i] = i == 1 ? 0 : 6 + 71 * i;
    c->desc.num_heads_q = 8;
    c->desc.seqlen_q = 2;
    c->desc.causal = 1;
    c->desc.page_size = 7;
    c->desc.extra_pages = 4;
    c->num_threads = 3;

    c = add(l, "page-192", 3);
    c->lens[0] = 191;
    c->lens[1] = 193;
    c->lens[2] = size == 1 ? 700 : 2000;
    c->desc.num_heads_q = 16;
    c->desc.dtype = ETAP_DTYPE_FP16;
    c->desc.page_size = 192;
    c->desc.extra_pages = 2;
    c->num_threads = 8;

    c = add(l, "sq1-causal-ignored", 4);
    for (int32_t i = 0; i < 4; i++)
        c->lens[i] = 1 + 90 * i;
    c->desc.num_heads_q = 16;
    c->desc.causal = 1; /* s_q == 1: causal must make no difference */
    c->num_threads = 3;

    c = add(l, "one-thread", 5);
    for (int32_t i = 0; i < 5; i++)
        c->lens[i] = i == 2 ? 0 : 100 * i + 3;
    c->desc.num_heads_q = 32;
    c->desc.seqlen_q = 2;
    c->num_threads = 1;

    if (for_cuda) {
        nb = size == 1 ? 512 : 4096;
        c = add(l, "cuda-b4096-short", nb);
        for (int32_t i = 0; i < nb; i++)
            c->lens[i] = tu_rng_uniform(&r) < 0.1 ? 0 : (int32_t)tu_rng_range(&r, 1, 64);
        c->desc.num_heads_q = 16;

        c = add(l, "cuda-b1-256K", 1);
        c->lens[0] = size == 1 ? 32768 : 262144;
        c->desc.num_heads_q = 16;

        c = add(l, "cuda-b1-256K-hq64", 1);
        c->lens[0] = size == 1 ? 32768 - 5 : 262144 - 5;
        c->desc.num_heads_q = 64;
        c->desc.dtype = ETAP_DTYPE_FP16;

        nb = size == 1 ? 16 : 128;
        c = add(l, "cuda-b128-mtp", nb);
        for (int32_t i = 0; i < nb; i++)
            c->lens[i] = (int32_t)tu_rng_range(&r, 500, 5000);
        c->desc.seqlen_q = 2;
        c->desc.causal = 1;
        c->desc.num_heads_q = 32;

        /* 80 rows per KV head (MTP with 5 positions): two row groups of 40, run as N = 48 */
        nb = size == 1 ? 6 : 24;
        c = add(l, "cuda-rows80-mtp5", nb);
        for (int32_t i = 0; i < nb; i++)
            c->lens[i] = i == 1 ? 3 : (int32_t)tu_rng_range(&r, 0, 3000);
        c->desc.seqlen_q = 5;
        c->desc.causal = 1;
        c->desc.num_heads_q = 32;
        c->desc.num_heads_kv = 2;

        nb = size == 1 ? 8 : 64;
        c = add(l, "cuda-b64-hq64", nb);
        for (int32_t i = 0; i < nb; i++)
            c->lens[i] = (int32_t)tu_rng_range(&r, 0, 8192);
        c->desc.num_heads_q = 64;

        /* One long sequence among short ones, in the warp combine (workers <= 16 b): it is
         * cut into far more than 32 splits (~100 with 132 workers), so the combine walks
         * its weights in several chunks of 32, with 10 splits in flight (b = 12, workers
         * >= 4 b: a round of 10 crosses a chunk boundary) and with 4 (b = 40). Its RoPE keys
         * spread up to 200x wider toward its last token (scores of std ~4 there), so the
         * splits' lse differ by several units and a weight taken from the wrong split shows
         * (with flat scores the lse of splits of ~600 keys agree to ~0.1 and it hides). */
        const int32_t one_long_b[3] = {12, 12, 40};
        for (int i = 0; i < 3; i++) {
            const int32_t long_len = (size == 1 ? 16384 : 65536) - 3;
            c = add(l, i == 0 ? "cuda-one-long-b12" : i == 1 ? "cuda-one-long-b12-hq32" : "cuda-one-long-b40",
                    one_long_b[i]);
            for (int32_t k = 0; k < one_long_b[i]; k++)
                c->lens[k] = k == 1 ? long_len : (int32_t)tu_rng_range(&r, 0, 200);
            c->desc.num_heads_q = i == 1 ? 32 : 16;
            c->desc.dtype = i == 1 ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
            c->desc.kv_ramp = 200.0 / long_len;
        }
    }

    /* seeds of the special cases */
    for (int i = idx; i < l->n; i++)
        l->cases[i].desc.seed = seed + 104729u * (uint64_t)i;
    if (!for_cuda)
        for (int i = idx; i < l->n; i++)
            l->cases[i].desc.pad_unit = 8;
}

/* Log-uniform integer in [lo, hi] (lo >= 1): small values as likely per octave as large. */
static int64_t log_range(tu_rng *r, int64_t lo, int64_t hi)
{
    double v = (double)lo * pow((double)hi / (double)lo, tu_rng_uniform(r));
    int64_t x = (int64_t)v;
    return x < lo ? lo : x > hi ? hi : x;
}

void dg_build_fuzz(dg_list *l, int count, int size, int for_cuda, uint64_t seed)
{
    memset(l, 0, sizeof *l);
    budget bud = budget_for(size);
    tu_rng r;
    tu_rng_seed(&r, seed ^ 0xF022F022F022ull);
    /* the row counts the CUDA backend branches on (N = 16 / 32 / 48, rows on M, row groups)
     * and the odd ones between them */
    static const int32_t groups[] = {16, 16, 16, 32, 64, 128, 1, 2, 8, 12, 20, 24, 40, 48, 96};
    static const int32_t heads_kv[] = {1, 1, 1, 1, 2, 4, 8};
    static const int32_t sqs[] = {1, 1, 1, 2, 2, 3, 4, 5, 8};
    static const int32_t cuda_pages[] = {64, 64, 64, 128, 256};
    static const int32_t cpu_pages[] = {1, 16, 64, 100, 128};
    for (int n = 0; n < count; n++) {
        const int32_t hkv = heads_kv[tu_rng_range(&r, 0, 6)];
        const int32_t group = groups[tu_rng_range(&r, 0, 14)];
        const int32_t sq = sqs[tu_rng_range(&r, 0, 8)];
        const int64_t rows = (int64_t)group * sq; /* per KV head */
        const int32_t b = (int32_t)log_range(&r, 1, 320);
        /* tokens this case may hold: the reference's cost is rows x tokens x h_kv */
        int64_t total = bud.row_tokens * 4 / (rows * hkv);
        total = total > bud.max_tokens * 4 ? bud.max_tokens * 4 : total;
        total = total < b ? b : total;
        const int shape = (int)tu_rng_range(&r, 0, 5);
        dg_case *c = add(l, "", b);
        static const char *const shape_name[] = {"equal", "uniform", "one-long", "few-long",
                                                 "tiny", "zeros"};
        snprintf(c->tag, sizeof c->tag, "fuzz/%s", shape_name[shape]);
        const int64_t each = total / b > 1 ? total / b : 1;
        const int32_t equal = (int32_t)log_range(&r, 1, each);
        const int32_t longest = (int32_t)(total / 2 > 1 ? total / 2 : 1);
        for (int32_t i = 0; i < b; i++) {
            int32_t v;
            switch (shape) {
            case 0: v = equal; break;                                         /* all alike */
            case 1: v = (int32_t)tu_rng_range(&r, 0, 2 * equal); break;       /* spread */
            case 2: v = (int32_t)tu_rng_range(&r, 0, 200); break;             /* short ... */
            case 3: v = tu_rng_uniform(&r) < 0.15 ? longest / 2 : (int32_t)tu_rng_range(&r, 1, 64); break;
            case 4: v = (int32_t)tu_rng_range(&r, 0, sq + 2); break;          /* below s_q */
            default: v = tu_rng_uniform(&r) < 0.5 ? 0 : (int32_t)log_range(&r, 1, each); break;
            }
            c->lens[i] = v;
        }
        if (shape == 2) /* ... and one long sequence somewhere among them */
            c->lens[tu_rng_range(&r, 0, b - 1)] = longest;
        fit(c->lens, b, total);
        tu_case_desc *d = &c->desc;
        d->num_heads_kv = hkv;
        d->num_heads_q = group * hkv;
        d->seqlen_q = sq;
        d->causal = sq > 1 && tu_rng_uniform(&r) < 0.6;
        d->dtype = tu_rng_uniform(&r) < 0.5 ? ETAP_DTYPE_FP16 : ETAP_DTYPE_BF16;
        d->page_size = for_cuda ? cuda_pages[tu_rng_range(&r, 0, 4)] : cpu_pages[tu_rng_range(&r, 0, 4)];
        d->softmax_scale = tu_rng_uniform(&r) < 0.5 ? ETAP_SOFTMAX_SCALE_DEFAULT
                                                    : (float)log_range(&r, 10, 1000) / 1000.0f;
        d->q_layout = (int)tu_rng_range(&r, 0, 2);
        d->out_padded = (int)tu_rng_range(&r, 0, 1);
        d->kv_padded = (int)tu_rng_range(&r, 0, 1);
        d->pad_unit = 8;
        d->extra_pages = (int)tu_rng_range(&r, 0, 3);
        d->extra_table_cols = (int)tu_rng_range(&r, 0, 2);
        d->table_stride_pad = (int)tu_rng_range(&r, 0, 1);
        /* scores that rise along each sequence, or one burst, on a quarter of the cases */
        const double mood = tu_rng_uniform(&r);
        if (mood < 0.15)
            d->kv_ramp = 200.0 / (double)(longest > equal ? longest : equal);
        else if (mood < 0.25)
            d->kv_spike = 1000.0;
        d->seed = seed + 15485863u * (uint64_t)(n + 1);
        c->num_threads = threads[tu_rng_range(&r, 0, 3)];
    }
}

void dg_free(dg_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->cases[i].lens);
    free(l->cases);
    memset(l, 0, sizeof *l);
}
