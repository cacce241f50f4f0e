/*
 * A QEMU TCG plugin (plugin API version 1, as in QEMU 7.2) that counts, for every guest
 * instruction address, how often it ran and how many of its data reads fell inside one
 * address range (the firmware's code memory: the board's flash, where the model's weights
 * sit) and outside it (SRAM: the arena, the stack).
 *
 * Arguments:  lo=<hex>  hi=<hex>  (the range [lo, hi))   out=<path>  (written at exit)
 * Output:     one line per instruction that ran: "<addr hex> <runs> <reads in range> <other reads>"
 *
 * Only the API entry points used here are declared; they match include/qemu/qemu-plugin.h of
 * QEMU 7.2 (QEMU_PLUGIN_VERSION 1), which Debian does not ship as a header.
 * Accesses are taken with QEMU_PLUGIN_MEM_RW and sorted by qemu_plugin_mem_is_store(): QEMU 7.2's
 * QEMU_PLUGIN_MEM_R filter was measured to pass the stores and drop the loads.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WB_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;

enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                                          void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op, void *ptr,
                                                uint64_t imm);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags, enum qemu_plugin_mem_rw rw, void *userdata);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

WB_EXPORT int qemu_plugin_version = 1;

typedef struct {
    uint64_t addr;
    uint64_t runs;
    uint64_t in_range;
    uint64_t other;
    int used;
} Entry;

#define TABLE_BITS 20 /* 1 M instruction addresses: far more than a TFLM firmware has */
#define TABLE_SIZE (1u << TABLE_BITS)

static Entry *table;
static uint64_t lo, hi;
static char out_path[4096];
static int full;

static Entry *entry_for(uint64_t addr)
{
    uint64_t h = (addr >> 1) * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = 0; i < TABLE_SIZE; i++) {
        Entry *e = &table[(uint32_t)((h >> (64 - TABLE_BITS)) + i) & (TABLE_SIZE - 1)];
        if (!e->used) {
            e->used = 1;
            e->addr = addr;
            return e;
        }
        if (e->addr == addr) {
            return e;
        }
    }
    full = 1;
    return NULL;
}

static void on_read(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    Entry *e = udata;
    (void)vcpu;
    if (qemu_plugin_mem_is_store(info)) {
        return;
    }
    if (vaddr >= lo && vaddr < hi) {
        e->in_range++;
    } else {
        e->other++;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        Entry *e = entry_for(qemu_plugin_insn_vaddr(insn));
        if (e == NULL) {
            continue;
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &e->runs, 1);
        qemu_plugin_register_vcpu_mem_cb(insn, on_read, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, e);
    }
}

static void write_counts(qemu_plugin_id_t id, void *udata)
{
    FILE *f = fopen(out_path, "w");
    (void)id;
    (void)udata;
    if (f == NULL) {
        return;
    }
    if (full) {
        fprintf(f, "# table full\n");
    }
    for (uint32_t i = 0; i < TABLE_SIZE; i++) {
        const Entry *e = &table[i];
        if (e->used && e->runs) {
            fprintf(f, "%" PRIx64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", e->addr, e->runs, e->in_range, e->other);
        }
    }
    fclose(f);
}

WB_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "lo=", 3) == 0) {
            lo = strtoull(argv[i] + 3, NULL, 0);
        } else if (strncmp(argv[i], "hi=", 3) == 0) {
            hi = strtoull(argv[i] + 3, NULL, 0);
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        } else {
            fprintf(stderr, "wb_loads_plugin: unknown argument '%s'\n", argv[i]);
            return 1;
        }
    }
    if (!out_path[0] || hi <= lo) {
        fprintf(stderr, "wb_loads_plugin: needs lo=, hi= (hi > lo) and out=\n");
        return 1;
    }
    table = calloc(TABLE_SIZE, sizeof(Entry));
    if (table == NULL) {
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
