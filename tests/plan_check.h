/*
 * plan_check.h - an independent verifier of split-KV plans (docs/plan-format.md,
 * src/plan.h): it recomputes the model (tiles, costs, prefix sums, quota) from the lengths
 * and checks every word of a plan against it, without enumerating tiles one by one, so it
 * also serves lengths near INT32_MAX.
 */
#ifndef ETAP_TEST_PLAN_CHECK_H
#define ETAP_TEST_PLAN_CHECK_H

#include <stddef.h>
#include <stdint.h>

typedef struct pc_stats {
    int64_t total_tiles;
    int64_t quota;
    int64_t max_load;     /* the kept cut's heaviest worker: tiles + 2 per piece */
    int32_t overhead;     /* the kept cut: 2 (first) or 0 (bare) */
    int32_t total_splits;
    int32_t max_splits_of_a_seq;
    int32_t busy_workers;
    int32_t max_seqs_of_a_worker;
} pc_stats;

/* Plan words for (batch, num_workers), as docs/plan-format.md lays them out. */
int64_t pc_plan_words(int32_t batch, int32_t num_workers);

/* Returns 1 when `plan` is exactly a valid plan for `lengths` (invalid lengths, < 0 or
 * > max_len, count as empty and must be reported in the header) and `rows` query rows per
 * KV head (they decide between two equally loaded cuts), 0 with the first problem in msg
 * otherwise. stats may be NULL. */
int pc_verify(const int32_t *plan, int32_t batch, int32_t num_workers, int32_t max_len,
              int32_t rows, const int32_t *lengths, pc_stats *stats, char *msg, size_t msg_len);

#endif /* ETAP_TEST_PLAN_CHECK_H */
