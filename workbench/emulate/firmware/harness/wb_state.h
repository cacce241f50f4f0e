/* State shared by workbench's firmware harness (wb_harness.cc) and its startup code (wb_startup.c):
 * what the firmware is doing, so that a fault or an abort can say where it happened. */
#ifndef WB_STATE_H_
#define WB_STATE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WB_PHASE_BOOT 0u
#define WB_PHASE_INIT 1u
#define WB_PHASE_ALLOCATE 2u
#define WB_PHASE_INVOKE 3u
#define WB_PHASE_DONE 4u

#define WB_STACK_PATTERN 0x5742534Bu

typedef struct {
  volatile uint32_t phase;
  volatile int32_t op_index;    /* the op being invoked, -1 outside an op */
  const char* volatile op_name; /* its name as TFLM reports it */
  volatile uint32_t sample;     /* the sample being run */
  int report;                   /* semihosting handle of the report file, -1 if not open */
} wb_state_t;

extern wb_state_t wb_state;

/* Linker-script symbols. */
extern uint32_t __stack_limit;
extern uint32_t __stack_top;

const char* wb_phase_name(uint32_t phase);
uint32_t wb_stack_high_water(void); /* bytes of the stack ever used (painted words overwritten) */
int wb_main(void);                  /* the harness; returns nonzero on success */

#ifdef __cplusplus
}
#endif

#endif /* WB_STATE_H_ */
