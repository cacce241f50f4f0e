// workbench's firmware harness: runs the model that `workbench export --format tflm` wrote
// (its model array and op resolver, included through the generated wb_model.h) with
// TensorFlow Lite Micro on an emulated Cortex-M, over every sample of the host file
// input.bin, and writes output.bin (the raw output tensors, sample after sample) and
// report.txt ("key value" lines) through semihosting.
//
// Instructions are counted with the machine's timer at WB_TIMER_BASE (a CMSDK APB timer, or
// the SSE-300 system counter when WB_TIMER_SSE_COUNTER is defined) read by a
// MicroProfilerInterface: under QEMU's -icount shift=0 each tick is a fixed number of
// instructions (the Python side knows the factor per machine).
#include <cstddef>
#include <cstdint>

#include "tensorflow/lite/micro/micro_allocator.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/micro/micro_resource_variable.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "wb_model.h"
#include "wb_semihost.h"
#include "wb_state.h"

#ifndef WB_TIMER_BASE
#error "WB_TIMER_BASE (the timer of the emulated machine) must be defined"
#endif
#ifndef WB_ARENA_BYTES
#define WB_ARENA_BYTES (8u * 1024u * 1024u)
#endif
#ifndef WB_MAX_EVENTS
#define WB_MAX_EVENTS 2048
#endif
#ifndef WB_RESOURCE_VARIABLES  // the model's VAR_HANDLE ops (wb_model.h); streaming models keep state in them
#define WB_RESOURCE_VARIABLES 0
#endif

namespace {

#if defined(WB_TIMER_SSE_COUNTER)
// Arm SSE-300 system counter, control frame: CNTCR (bit 0 enables it) and the low word of
// CNTCV, a 64-bit up-counter; tick differences wrap correctly in 32 bits.
struct SseCounter {
  volatile uint32_t cntcr;
  volatile uint32_t cntsr;
  volatile uint32_t cntcv_lo;
  volatile uint32_t cntcv_hi;
};

SseCounter* const kCounter = reinterpret_cast<SseCounter*>(static_cast<uintptr_t>(WB_TIMER_BASE));
uint32_t g_tick_origin = 0u;

void TimerStart() {
  kCounter->cntcr = 1u;
  g_tick_origin = kCounter->cntcv_lo;
}

// Ticks elapsed since the timer started.
inline uint32_t Ticks() { return kCounter->cntcv_lo - g_tick_origin; }
#else
// CMSDK APB timer: a 32-bit down-counter (CTRL bit 0 enables it).
struct CmsdkTimer {
  volatile uint32_t ctrl;
  volatile uint32_t value;
  volatile uint32_t reload;
  volatile uint32_t intstatus;
};

CmsdkTimer* const kTimer = reinterpret_cast<CmsdkTimer*>(static_cast<uintptr_t>(WB_TIMER_BASE));

void TimerStart() {
  kTimer->ctrl = 0u;
  kTimer->reload = 0xFFFFFFFFu;
  kTimer->value = 0xFFFFFFFFu;
  kTimer->ctrl = 1u;
}

// Ticks elapsed since the timer started (it counts down).
inline uint32_t Ticks() { return 0xFFFFFFFFu - kTimer->value; }
#endif

// The arena and the profiler's table are the harness's own memory: they live in the big
// region (.bss.wb_*), so the board RAM the caller computes from .data + .bss leaves them out.
alignas(16) uint8_t g_arena[WB_ARENA_BYTES] __attribute__((section(".bss.wb_arena")));

struct OpRecord {
  const char* name;
  uint32_t ticks;  // summed over every sample
  uint32_t depth;  // nesting depth (ops inside IF / WHILE subgraphs)
};

OpRecord g_ops[WB_MAX_EVENTS] __attribute__((section(".bss.wb_harness")));

// Counts ticks per op. Event handles are indices into g_ops for the current invocation.
class TickProfiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char* tag) override {
    const uint32_t handle = next_;
    ++next_;
    if (handle < WB_MAX_EVENTS) {
      if (g_ops[handle].name == nullptr) g_ops[handle].name = tag;
      g_ops[handle].depth = depth_;
    } else {
      overflow_ = true;
    }
    if (depth_ < kDepth) start_[depth_] = Ticks();
    wb_state.op_index = static_cast<int32_t>(handle);
    wb_state.op_name = tag;
    ++depth_;
    return handle;
  }

  void EndEvent(uint32_t handle) override {
    const uint32_t now = Ticks();
    if (depth_ > 0) --depth_;
    if (handle < WB_MAX_EVENTS && depth_ < kDepth) g_ops[handle].ticks += now - start_[depth_];
    wb_state.op_index = -1;
  }

  void StartInvocation() { next_ = 0; depth_ = 0; }
  uint32_t events() const { return next_; }
  bool overflow() const { return overflow_; }

 private:
  static constexpr uint32_t kDepth = 64;  // events open at once (ops nested in subgraphs)
  uint32_t start_[kDepth] = {};
  uint32_t next_ = 0;
  uint32_t depth_ = 0;
  bool overflow_ = false;
};

void Key(const char* key, uint32_t value) {
  wb_sh_puts(wb_state.report, key);
  wb_sh_puts(wb_state.report, " ");
  wb_sh_putu(wb_state.report, value);
  wb_sh_puts(wb_state.report, "\n");
}

void Text(const char* key, const char* value) {
  wb_sh_puts(wb_state.report, key);
  wb_sh_puts(wb_state.report, " ");
  wb_sh_puts(wb_state.report, value);
  wb_sh_puts(wb_state.report, "\n");
}

void Phase(uint32_t phase) {
  wb_state.phase = phase;
  Text("phase", wb_phase_name(phase));
}

// TFLM's MicroPrintf lines go to the report, one "log" line each (newlines flattened).
void LogCallback(const char* s) {
  char line[160];
  size_t n = 0;
  for (; s[n] != '\0' && n + 1 < sizeof(line); ++n) line[n] = (s[n] == '\n' || s[n] == '\r') ? ' ' : s[n];
  line[n] = '\0';
  Text("log", line);
}

int Fail(const char* why) {
  Text("error", why);
  Key("stack_used_bytes", wb_stack_high_water());
  Text("status", "error");
  return 0;
}

size_t TensorBytes(const TfLiteTensor* t) { return t == nullptr ? 0u : t->bytes; }

// A loop of exactly 2 * kCalibLoops instructions (subs + bne per iteration), timed: lets the
// host check the machine's instructions-per-tick factor on every run.
constexpr uint32_t kCalibLoops = 100000u;

void Calibrate() {
  uint32_t n = kCalibLoops;
  const uint32_t t0 = Ticks();
  __asm__ volatile("1:\n\tsubs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
  const uint32_t t1 = Ticks();
  Key("calib_instructions", 2u * kCalibLoops);
  Key("calib_ticks", t1 - t0);
}

}  // namespace

extern "C" int wb_main(void) {
  wb_state.report = wb_sh_open("report.txt", WB_SH_MODE_WB);
  if (wb_state.report < 0) return 0;
  TimerStart();
  Key("wb_harness", 1u);
  Key("arena_size_bytes", WB_ARENA_BYTES);
  Calibrate();
  RegisterDebugLogCallback(LogCallback);

  Phase(WB_PHASE_INIT);
  const tflite::Model* model = tflite::GetModel(WB_MODEL_DATA);
  if (model->version() != TFLITE_SCHEMA_VERSION) return Fail("model schema version is not TFLITE_SCHEMA_VERSION");

  WB_MODEL_NS::OpResolver op_resolver;
  if (WB_MODEL_NS::RegisterOps(op_resolver) != kTfLiteOk) return Fail("RegisterOps failed");

  TickProfiler profiler;
  // The allocator is made here (as the interpreter would make it) so that the resource variables of
  // a stateful model (VAR_HANDLE / ASSIGN_VARIABLE / READ_VARIABLE) live in the same arena.
  tflite::MicroAllocator* allocator = tflite::MicroAllocator::Create(g_arena, sizeof(g_arena));
  if (allocator == nullptr) return Fail("MicroAllocator::Create failed");
  tflite::MicroResourceVariables* resource_variables = nullptr;
#if WB_RESOURCE_VARIABLES > 0
  resource_variables = tflite::MicroResourceVariables::Create(allocator, WB_RESOURCE_VARIABLES);
  if (resource_variables == nullptr) return Fail("MicroResourceVariables::Create failed");
#endif
  Key("resource_variables", WB_RESOURCE_VARIABLES);
  tflite::MicroInterpreter interpreter(model, op_resolver, allocator, resource_variables, &profiler);

  Phase(WB_PHASE_ALLOCATE);
  const uint32_t t0 = Ticks();
  if (interpreter.AllocateTensors() != kTfLiteOk) return Fail("AllocateTensors failed");
  Key("allocate_ticks", Ticks() - t0);
  Key("arena_used_bytes", static_cast<uint32_t>(interpreter.arena_used_bytes()));

  size_t in_bytes = 0, out_bytes = 0;
  for (size_t i = 0; i < interpreter.inputs_size(); ++i) in_bytes += TensorBytes(interpreter.input(i));
  for (size_t i = 0; i < interpreter.outputs_size(); ++i) out_bytes += TensorBytes(interpreter.output(i));
  Key("inputs", static_cast<uint32_t>(interpreter.inputs_size()));
  Key("outputs", static_cast<uint32_t>(interpreter.outputs_size()));
  Key("input_bytes", static_cast<uint32_t>(in_bytes));
  Key("output_bytes", static_cast<uint32_t>(out_bytes));

  const int in = wb_sh_open("input.bin", WB_SH_MODE_RB);
  if (in < 0) return Fail("cannot open input.bin");
  const long in_len = wb_sh_flen(in);
  if (in_len < 0 || in_bytes == 0 || static_cast<size_t>(in_len) % in_bytes != 0) {
    return Fail("input.bin is not a whole number of samples");
  }
  const uint32_t samples = static_cast<uint32_t>(static_cast<size_t>(in_len) / in_bytes);
  const int out = wb_sh_open("output.bin", WB_SH_MODE_WB);
  if (out < 0) return Fail("cannot open output.bin");
  Key("samples", samples);

  Phase(WB_PHASE_INVOKE);
  uint32_t min_ticks = 0xFFFFFFFFu, max_ticks = 0u, sum_ticks = 0u, events = 0u;
  for (uint32_t s = 0; s < samples; ++s) {
    wb_state.sample = s;
    for (size_t i = 0; i < interpreter.inputs_size(); ++i) {
      TfLiteTensor* t = interpreter.input(i);
      if (wb_sh_read(in, t->data.raw, t->bytes) != t->bytes) return Fail("short read from input.bin");
    }
    profiler.StartInvocation();
    const uint32_t start = Ticks();
    const TfLiteStatus status = interpreter.Invoke();
    const uint32_t ticks = Ticks() - start;
    if (status != kTfLiteOk) return Fail("Invoke failed");
    for (size_t i = 0; i < interpreter.outputs_size(); ++i) {
      const TfLiteTensor* t = interpreter.output(i);
      if (wb_sh_write(out, t->data.raw, t->bytes) != t->bytes) return Fail("short write to output.bin");
    }
    if (ticks < min_ticks) min_ticks = ticks;
    if (ticks > max_ticks) max_ticks = ticks;
    sum_ticks += ticks;
    events = profiler.events();
  }
  wb_sh_close(in);
  wb_sh_close(out);
  Phase(WB_PHASE_DONE);

  Key("invoke_ticks_min", samples ? min_ticks : 0u);
  Key("invoke_ticks_max", max_ticks);
  Key("invoke_ticks_sum", sum_ticks);
  Key("events", events);
  Key("events_overflow", profiler.overflow() ? 1u : 0u);
  const uint32_t shown = events < WB_MAX_EVENTS ? events : WB_MAX_EVENTS;
  for (uint32_t k = 0; k < shown; ++k) {
    wb_sh_puts(wb_state.report, "op ");
    wb_sh_putu(wb_state.report, k);
    wb_sh_puts(wb_state.report, " ");
    wb_sh_putu(wb_state.report, g_ops[k].depth);
    wb_sh_puts(wb_state.report, " ");
    wb_sh_putu(wb_state.report, g_ops[k].ticks);
    wb_sh_puts(wb_state.report, " ");
    wb_sh_puts(wb_state.report, g_ops[k].name != nullptr ? g_ops[k].name : "?");
    wb_sh_puts(wb_state.report, "\n");
  }
  Key("stack_used_bytes", wb_stack_high_water());
  Text("status", "ok");
  wb_sh_close(wb_state.report);
  return 1;
}
