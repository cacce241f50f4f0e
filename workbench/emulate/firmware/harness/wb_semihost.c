/* Semihosting for workbench's firmware harness: see wb_semihost.h. */
#include "wb_semihost.h"

#include <string.h>

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_FLEN 0x0C
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define ADP_STOPPED_RUNTIME_ERROR 0x20023u

static int wb_sh_call(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

int wb_sh_open(const char* name, int mode) {
  uint32_t args[3] = {(uint32_t)(uintptr_t)name, (uint32_t)mode, (uint32_t)strlen(name)};
  return wb_sh_call(SYS_OPEN, args);
}

int wb_sh_close(int handle) {
  uint32_t args[1] = {(uint32_t)handle};
  return wb_sh_call(SYS_CLOSE, args);
}

size_t wb_sh_write(int handle, const void* buf, size_t len) {
  uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, (uint32_t)len};
  int left = wb_sh_call(SYS_WRITE, args); /* bytes NOT written */
  return left < 0 ? 0 : len - (size_t)left;
}

size_t wb_sh_read(int handle, void* buf, size_t len) {
  uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, (uint32_t)len};
  int left = wb_sh_call(SYS_READ, args); /* bytes NOT read */
  return left < 0 ? 0 : len - (size_t)left;
}

long wb_sh_flen(int handle) {
  uint32_t args[1] = {(uint32_t)handle};
  return (long)wb_sh_call(SYS_FLEN, args);
}

void wb_sh_exit(int ok) {
  /* AArch32 SYS_EXIT takes the reason code itself in r1; QEMU exits 0 on ApplicationExit. */
  for (;;) {
    wb_sh_call(SYS_EXIT, (void*)(uintptr_t)(ok ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUNTIME_ERROR));
  }
}

void wb_sh_puts(int handle, const char* s) {
  if (handle >= 0) wb_sh_write(handle, s, strlen(s));
}

void wb_sh_putu(int handle, uint32_t v) {
  char buf[12];
  int i = 11;
  buf[i] = '\0';
  do {
    buf[--i] = (char)('0' + (v % 10u));
    v /= 10u;
  } while (v != 0u && i > 0);
  wb_sh_puts(handle, &buf[i]);
}

void wb_sh_puthex(int handle, uint32_t v) {
  static const char digits[] = "0123456789abcdef";
  char buf[11];
  buf[0] = '0';
  buf[1] = 'x';
  for (int i = 0; i < 8; ++i) buf[2 + i] = digits[(v >> (28 - 4 * i)) & 0xFu];
  buf[10] = '\0';
  wb_sh_puts(handle, buf);
}
