/* Arm semihosting calls (the "Semihosting for AArch32 and AArch64" specification, Arm IHI 0088):
 * BKPT 0xAB on M-profile, operation number in r0, parameter block in r1, result in r0.
 * QEMU serves them with -semihosting-config enable=on,target=native (files relative to its cwd).
 * Written for workbench's firmware harness. */
#ifndef WB_SEMIHOST_H_
#define WB_SEMIHOST_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Open modes of SYS_OPEN (ISO C fopen modes by index). */
#define WB_SH_MODE_RB 1
#define WB_SH_MODE_WB 5

int wb_sh_open(const char* name, int mode);        /* handle, or -1 */
int wb_sh_close(int handle);
size_t wb_sh_write(int handle, const void* buf, size_t len); /* bytes written */
size_t wb_sh_read(int handle, void* buf, size_t len);        /* bytes read */
long wb_sh_flen(int handle);                       /* file length, or -1 */
void wb_sh_exit(int ok) __attribute__((noreturn)); /* ok != 0: exit status 0; else 1 */

/* Text helpers for the report (no printf: keep the image what a user's firmware links). */
void wb_sh_puts(int handle, const char* s);
void wb_sh_putu(int handle, uint32_t v);
void wb_sh_puthex(int handle, uint32_t v);

#ifdef __cplusplus
}
#endif

#endif /* WB_SEMIHOST_H_ */
