/* Startup code of workbench's firmware harness: vector table, reset handler (FPU on, .data copied,
 * .bss zeroed, stack painted for the high-water mark, C++ constructors), fault handlers that
 * write where the firmware was to the report, and the few libc hooks a bare-metal image needs. */
#include <stddef.h>
#include <stdint.h>

#include "wb_semihost.h"
#include "wb_state.h"

extern uint32_t __data_load;
extern uint32_t __data_start;
extern uint32_t __data_end;
extern uint32_t __bss_start;
extern uint32_t __bss_end;
extern uint32_t __heap_start;
extern uint32_t __heap_end;

extern void __libc_init_array(void);

void Reset_Handler(void) __attribute__((noreturn));
void Default_Handler(void);
void HardFault_Handler(void) __attribute__((naked));
void MemManage_Handler(void) __attribute__((naked));
void BusFault_Handler(void) __attribute__((naked));
void UsageFault_Handler(void) __attribute__((naked));
void SecureFault_Handler(void) __attribute__((naked));
void wb_fault(uint32_t* frame, uint32_t kind) __attribute__((used, noreturn));

typedef void (*wb_vector_t)(void);

/* The 16 system exception vectors; no peripheral interrupt is used. */
__attribute__((section(".vectors"), used)) const wb_vector_t wb_vectors[16] = {
    (wb_vector_t)(uintptr_t)&__stack_top,
    Reset_Handler,
    Default_Handler,    /* NMI */
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    SecureFault_Handler, /* Armv8-M only; reserved on Armv7-M */
    0, 0, 0,
    Default_Handler,    /* SVCall */
    Default_Handler,    /* DebugMonitor */
    0,
    Default_Handler,    /* PendSV */
    Default_Handler,    /* SysTick */
};

wb_state_t wb_state = {WB_PHASE_BOOT, -1, 0, 0u, -1};

static const char* const wb_phase_names[] = {"boot", "init", "allocate", "invoke", "done"};

const char* wb_phase_name(uint32_t phase) {
  return phase < sizeof(wb_phase_names) / sizeof(wb_phase_names[0]) ? wb_phase_names[phase] : "unknown";
}

void Reset_Handler(void) {
  /* CP10/CP11 full access (FPU, and MVE on Armv8.1-M) before any floating-point code. */
  *(volatile uint32_t*)0xE000ED88u |= (0xFu << 20);
  __asm__ volatile("dsb\n\tisb" ::: "memory");

  for (uint32_t *src = &__data_load, *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
  for (uint32_t* dst = &__bss_start; dst < &__bss_end;) *dst++ = 0u;

  /* Paint the stack below the current frame; wb_stack_high_water() finds the lowest word overwritten. */
  uint32_t sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (volatile uint32_t* p = &__stack_limit; (uintptr_t)p < (uintptr_t)(sp - 64u); ++p) *p = WB_STACK_PATTERN;

  __libc_init_array();
  const int ok = wb_main();
  wb_sh_exit(ok);
}

uint32_t wb_stack_high_water(void) {
  const uint32_t* p = &__stack_limit;
  while (p < &__stack_top && *p == WB_STACK_PATTERN) ++p;
  return (uint32_t)((uintptr_t)&__stack_top - (uintptr_t)p);
}

static const char* const wb_fault_names[] = {"hardfault", "memmanage", "busfault", "usagefault", "securefault",
                                             "unexpected-exception", "abort"};

void wb_fault(uint32_t* frame, uint32_t kind) {
  const int h = wb_state.report;
  wb_sh_puts(h, "fault ");
  wb_sh_puts(h, kind < 7u ? wb_fault_names[kind] : "unknown");
  wb_sh_puts(h, "\nfault_phase ");
  wb_sh_puts(h, wb_phase_name(wb_state.phase));
  wb_sh_puts(h, "\nfault_sample ");
  wb_sh_putu(h, wb_state.sample);
  if (wb_state.op_index >= 0) {
    wb_sh_puts(h, "\nfault_op_index ");
    wb_sh_putu(h, (uint32_t)wb_state.op_index);
    wb_sh_puts(h, "\nfault_op_name ");
    wb_sh_puts(h, wb_state.op_name ? wb_state.op_name : "?");
  }
  if (frame != 0) {
    wb_sh_puts(h, "\nfault_pc ");
    wb_sh_puthex(h, frame[6]);
    wb_sh_puts(h, "\nfault_cfsr ");
    wb_sh_puthex(h, *(volatile uint32_t*)0xE000ED28u);
    wb_sh_puts(h, "\nfault_hfsr ");
    wb_sh_puthex(h, *(volatile uint32_t*)0xE000ED2Cu);
  }
  wb_sh_puts(h, "\nstack_used_bytes ");
  wb_sh_putu(h, wb_stack_high_water());
  wb_sh_puts(h, "\nstatus fault\n");
  wb_sh_exit(0 == 1);
}

/* r0 = the exception stack frame (MSP: the harness never switches to PSP), r1 = which fault. */
void HardFault_Handler(void) { __asm__ volatile("mrs r0, msp\n\tmovs r1, #0\n\tb wb_fault"); }
void MemManage_Handler(void) { __asm__ volatile("mrs r0, msp\n\tmovs r1, #1\n\tb wb_fault"); }
void BusFault_Handler(void) { __asm__ volatile("mrs r0, msp\n\tmovs r1, #2\n\tb wb_fault"); }
void UsageFault_Handler(void) { __asm__ volatile("mrs r0, msp\n\tmovs r1, #3\n\tb wb_fault"); }
void SecureFault_Handler(void) { __asm__ volatile("mrs r0, msp\n\tmovs r1, #4\n\tb wb_fault"); }
void Default_Handler(void) { wb_fault(0, 5u); }

/* TFLM's TFLITE_ABORT and failed asserts end here. */
void abort(void) { wb_fault(0, 6u); }
void _exit(int status) { wb_sh_exit(status == 0); }

/* Hooks that -nostartfiles leaves undefined: no global destructors ever run on this image. */
void* __dso_handle = 0;
void _init(void) {}
void _fini(void) {}

/* A heap for anything in libc that allocates (the harness and TFLM do not): in the big region. */
void* _sbrk(ptrdiff_t incr) {
  static uint8_t* brk = 0;
  if (brk == 0) brk = (uint8_t*)&__heap_start;
  if (incr < 0 || (uintptr_t)(brk + incr) > (uintptr_t)&__heap_end) return (void*)-1;
  uint8_t* old = brk;
  brk += incr;
  return old;
}
