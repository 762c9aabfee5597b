/*
 * trace_slots.h - the slots of the opt-in CTA timeline (cmake -DETAP_TRACE=ON): written by
 * the kernels through src/cuda/trace.cuh, read by `etap-bench --trace`. Plain C.
 *
 * Split kernel: one row of ETAP_TRACE_SLOTS 64-bit words per CTA of KV head 0 (worker w <
 * ETAP_TRACE_CTAS), %globaltimer nanoseconds unless marked as a count; a sequence-wise
 * slot holds the CTA's last sequence. Combine kernel: TRACE_COMBINE_SLOTS words per CTA.
 */
#ifndef ETAP_TRACE_SLOTS_H
#define ETAP_TRACE_SLOTS_H

#define ETAP_TRACE_CTAS 264
#define ETAP_TRACE_SLOTS 48
#define ETAP_TRACE_TILES 10          /* tiles k < 10 have their own slots */
#define ETAP_TRACE_PRODUCER_TILES 5  /* producer copies k < 5 have their own slots */
#define ETAP_TRACE_COMBINE_CTAS 8192

enum {
    TRACE_ENTRY = 0,
    TRACE_DEP_WAIT = 1,       /* griddepcontrol.wait returned */
    TRACE_PLAN = 2,           /* plan status checked after the wait (record read before it) */
    TRACE_EXIT = 3,
    TRACE_Q_READY = 4,        /* the first sequence's Q landed */
    TRACE_TILE_FULL = 5,      /* + 2k: tile k landed (the consumers' wait returned) */
    TRACE_TILE_DONE = 6,      /* + 2k: its PV product complete */
    TRACE_LAST_TILE = 25,     /* the last tile's PV product complete */
    TRACE_EPILOGUE = 26,      /* the last epilogue's stores issued */
    TRACE_TILES = 27,         /* count: tiles of the CTA */
    TRACE_SEQS = 28,          /* count: sequences of the CTA */
    TRACE_SMID = 29,          /* value: the SM the CTA ran on */
    TRACE_PROD_FREE = 30,     /* + 2k: producer: stage free for copy k */
    TRACE_PROD_ISSUED = 31,   /* + 2k: copy k issued */
    TRACE_T2_S = 40,          /* tile 2: S^T done */
    TRACE_T2_SOFTMAX = 41,    /* tile 2: softmax done */
    TRACE_T2_P_FULL = 42,     /* tile 2: P^T written by both warpgroups */
    TRACE_T2_PV_ISSUED = 43,  /* tile 2: PV product issued */
    TRACE_SUMS = 44,          /* the last epilogue's row sums exchanged */
    TRACE_PROD_START = 45,    /* producer: its thread entered the copy loop (after setmaxnreg) */
    TRACE_PROD_LEN = 46,      /* producer: the first sequence's length read */
    TRACE_PROD_PAGE = 47      /* producer: the first tile's block-table entry read */
};
enum {
    TRACE_COMBINE_ENTRY = 0,
    TRACE_COMBINE_DEP_WAIT = 1,
    TRACE_COMBINE_EXIT = 2,
    TRACE_COMBINE_WEIGHTS = 3, /* the row's lse read, max and weight sum known */
    TRACE_COMBINE_MERGED = 4,  /* its partial rows read and merged, before the stores */
    TRACE_COMBINE_PROBE = 5,   /* a plan word read through L2 right after the wait arrived */
    TRACE_COMBINE_LSE = 6,     /* thread 0: its first partial lse arrived */
    TRACE_COMBINE_ROW = 7,     /* thread 0: its first partial row's values arrived */
    TRACE_COMBINE_MAX = 8,     /* the row's lse maximum known */
    TRACE_COMBINE_SLOTS = 9
};

#endif
