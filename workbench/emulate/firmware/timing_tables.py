"""Instruction classes of Thumb-2 and the cycles per class on each Cortex-M core, with sources.

Mnemonics are objdump's (GNU) base mnemonics: condition, width (.w/.n), flag-setting ``s``
and FP type suffixes are stripped by ``timing.base_mnemonic``. Classes:

alu         data processing, shifts, moves, compares, extends, bit-field, saturate, CLZ/REV
simd        packed 8/16-bit add/sub/extend/pack (SADD16, SXTB16, SXTAB16, PKHBT, SEL, ...)
mul         32x32->32 multiply            mac   MLA/MLS
mull        32x32->64 multiply(-accumulate) (SMULL/UMULL/SMLAL/UMLAL)
dsp_mac     16-bit DSP multiplies and dual MACs (SMLAD, SMLABB, SMULBB, SMUAD, SMMLA, SMLALD, ...)
div         SDIV/UDIV                     load / store  single LDR*/STR* (and PLD)
ldrd/strd   doubleword load/store         ldm / stm     LDM/POP, STM/PUSH (+ per register)
branch      B/BL/BX/BLX/CBZ/CBNZ          table_branch TBB/TBH
load_pc     LDR pc                        alu_pc  MOV/ADD to pc
it          IT blocks                     fpu_*   single-precision FP (alu, mac, div/sqrt, load/store, multiple)
system      barriers, MRS/MSR, CPS, SVC, BKPT, hints (NOP, branch-future BF*)
loop_start  DLS/WLS/DLSTP/WLSTP (Armv8.1-M low-overhead loops)   loop_end  LE/LETP

Helium (MVE, Armv8.1-M) classes, by the execution pipe the Cortex-M55 issues them to (LLVM's
Cortex-M55 model, see M55_LLVM): ``mve_load`` / ``mve_store`` (VLDR*/VSTR*, VLD2x/VLD4x, VST2x/VST4x:
the load/store pipe), ``mve_alu`` (integer pipe: VADD/VSUB/logic/shifts/VDUP/VMOVL/VQMOVN/VMAX/
VPSEL...), ``mve_mul`` (VMUL/VQRDMULH/VMULL...), ``mve_mac`` (VMLA, VMLADAV/VMLAV/VMLALDAV,
VADDV/VADDLV: multiply-accumulates and sums across the vector), ``mve_fp`` (float vector ops),
``mve_cmp`` (VCMP/VPT) -- these four on the FP/multiply pipe -- and ``mve_pred`` (VCTP/VPST/VPNOT/
LCTP: the control pipe). A ``v`` mnemonic with a Q register among its operands is an MVE
instruction (VADD of Q registers vs the scalar VADD of S registers); objdump appends ``t``/``e`` to
an MVE instruction inside a VPT block (``vldrbt.u8``, ``vmlavat.s8``): ``timing.classify`` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_GROUPS = {
    "alu": "adc add addw adr and asr bic bfc bfi cmn cmp eor lsl lsr mov movw movt mvn neg orn orr rbit rev rev16 "
           "revsh ror rrx rsb sbc sbfx sub subw teq tst ubfx uxtb uxth sxtb sxth clz ssat usat cpy",
    "simd": "sadd16 sadd8 ssub16 ssub8 sasx ssax uadd16 uadd8 usub16 usub8 uasx usax qadd qsub qdadd qdsub qadd16 "
            "qadd8 qsub16 qsub8 qasx qsax uqadd16 uqadd8 uqsub16 uqsub8 shadd16 shadd8 shsub16 shsub8 uhadd16 "
            "uhadd8 uhsub16 uhsub8 sxtb16 sxtab16 sxtab sxtah uxtb16 uxtab16 uxtab uxtah pkhbt pkhtb sel ssat16 "
            "usat16 usad8 usada8",
    "mul": "mul",
    "mac": "mla mls",
    "mull": "smull umull smlal umlal umaal",
    "dsp_mac": "smlad smladx smlsd smlsdx smlabb smlabt smlatb smlatt smlawb smlawt smulbb smulbt smultb smultt "
               "smulwb smulwt smuad smuadx smusd smusdx smmul smmulr smmla smmlar smmls smmlsr smlald smlaldx smlsld "
               "smlsldx smlalbb smlalbt smlaltb smlaltt",
    "div": "sdiv udiv",
    "load": "ldr ldrb ldrh ldrsb ldrsh ldrex ldrexb ldrexh ldrt ldrbt ldrht ldrsbt ldrsht pld pli lda ldab ldah",
    "store": "str strb strh strex strexb strexh strt strbt strht stl stlb stlh",
    "ldrd": "ldrd", "strd": "strd",
    "ldm": "ldm ldmia ldmdb ldmfd ldmea pop",
    "stm": "stm stmia stmdb stmfd stmea push",
    "branch": "b bl bx blx cbz cbnz",
    "table_branch": "tbb tbh",
    "fpu_alu": "vadd vsub vmul vnmul vabs vneg vcmp vcmpe vcvt vcvtr vcvta vcvtn vcvtp vcvtm vmov vmrs vmsr vsel "
               "vselgt vselge vseleq vselvs vmaxnm vminnm vrinta vrintn vrintp vrintm vrintr vrintx vrintz",
    "fpu_mac": "vmla vmls vnmla vnmls vfma vfms vfnma vfnms",
    "fpu_div": "vdiv vsqrt",
    "fpu_load": "vldr", "fpu_store": "vstr",
    "fpu_ldm": "vldm vldmia vldmdb vstm vstmia vstmdb vpush vpop",
    "system": "nop dsb dmb isb mrs msr cpsid cpsie svc bkpt wfi wfe sev yield udf vscclrm bf bfx bfl bflx bfcsel",
    "loop_start": "dls wls dlstp wlstp",
    "loop_end": "le letp",
}
# Armv8.1-M scalar additions: long shifts on register pairs and conditional selects (one ALU op each).
_V81M_ALU = ("asrl lsll lsrl sqrshr sqrshrl sqshl sqshll srshr srshrl uqrshl uqrshll uqshl uqshll urshr urshrl "
             "csel csinc csinv csneg cset csetm cinc cinv cneg clrm")
CLASS_OF: dict[str, str] = {m: cls for cls, names in _GROUPS.items() for m in names.split()}
CLASS_OF.update({m: "alu" for m in _V81M_ALU.split()})

_MVE_GROUPS = {
    "mve_load": "vldrb vldrh vldrw vldrd vld20 vld21 vld40 vld41 vld42 vld43",
    "mve_store": "vstrb vstrh vstrw vstrd vst20 vst21 vst40 vst41 vst42 vst43",
    "mve_alu": "vabav vabd vabs vadc vadci vadd vand vbic vbrsr vcadd vcls vclz vdup vddup vdwdup vidup viwdup veor "
               "vhadd vhcadd vhsub vmax vmaxa vmin vmina vmaxv vmaxav vminv vminav vmovnb vmovnt vmovlb vmovlt vmov "
               "vmvn vneg vorn vorr vpsel vqabs vqadd vqmovnb vqmovnt vqmovunb vqmovunt vqneg vshl vqshl vqshlu "
               "vrshl vqrshl vshr vrshr vshrnb vshrnt vrshrnb vrshrnt vqshrnb vqshrnt vqrshrnb vqrshrnt vqshrunb "
               "vqshrunt vqrshrunb vqrshrunt vqsub vsub vrev16 vrev32 vrev64 vrhadd vsbc vsbci vsli vsri vshlc "
               "vshllb vshllt",
    "mve_mul": "vmul vmulh vrmulh vqdmulh vqrdmulh vmullb vmullt vqdmullb vqdmullt",
    "mve_mac": "vmla vmlas vqdmlah vqrdmlah vqdmlash vqrdmlash vqdmladh vqdmladhx vqrdmladh vqrdmladhx vqdmlsdh "
               "vqdmlsdhx vqrdmlsdh vqrdmlsdhx vmladav vmladava vmladavx vmladavax vmlav vmlava vmlsdav vmlsdava "
               "vmlsdavx vmlsdavax vmlaldav vmlaldava vmlaldavx vmlaldavax vmlalv vmlalva vmlsldav vmlsldava "
               "vmlsldavx vmlsldavax vrmlaldavh vrmlaldavha vrmlaldavhx vrmlaldavhax vrmlalvh vrmlalvha "
               "vrmlsldavh vrmlsldavha vrmlsldavhx vrmlsldavhax vaddv vaddva vaddlv vaddlva",
    "mve_fp": "vfma vfms vfmas vcvt vcvta vcvtn vcvtp vcvtm vcvtb vcvtt vrinta vrintn vrintp vrintm vrintx vrintz "
              "vmaxnm vminnm vmaxnma vminnma vmaxnmv vminnmv vmaxnmav vminnmav vcmla vcmul",
    "mve_cmp": "vcmp vpt",
    "mve_pred": "vctp vpst vpnot lctp",
}
MVE_CLASS_OF: dict[str, str] = {m: cls for cls, names in _MVE_GROUPS.items() for m in names.split()}
# Integer-pipe names whose .f16/.f32 form runs on the FP pipe (VADD.F32 q0, q1, q2).
MVE_FLOAT_FORMS = frozenset("vabd vabs vadd vcadd vneg vsub".split())
MVE_FLOAT_MUL_FORMS = frozenset("vmul vmla vmlas".split())
# Names that are MVE whatever their operands (no Q register in VCTP r0 / VPST).
MVE_ONLY = frozenset("vctp vpst vpnot lctp".split())
# Which pipe of the Cortex-M55's Helium unit each MVE class occupies (LLVM ARMScheduleM55.td).
M55_PIPES = {"mve_load": "load/store", "mve_store": "load/store", "mve_alu": "integer", "mve_mul": "fp/mul",
             "mve_mac": "fp/mul", "mve_fp": "fp/mul", "mve_cmp": "fp/mul"}
CLASSES = (*_GROUPS, *_MVE_GROUPS, "it", "load_pc", "alu_pc", "other")

M4_TRM = ("Arm Cortex-M4 Processor Technical Reference Manual r0p1 (DDI 0439B), 3.3.1 'Cortex-M4 instruction set "
          "summary', Table 3-1, and 7.2.3 FPU instruction timing, Table 7-1: "
          "https://developer.arm.com/documentation/ddi0439/b/Programmers-Model/Instruction-set-summary/"
          "Cortex-M4-instructions")
M4_PIPELINING = ("Cortex-M4 TRM 3.3.2 'Load/store timings': neighbouring load/store singles pipeline, the next LDR "
                 "costs one cycle less when its address does not use the previous load's result; STR Rx,[Ry,#imm] is "
                 "one cycle (write buffer). Text reproduced in TI SWCU185G: https://ti.com/document-viewer/lit/html/"
                 "SWCU185G/GUID-FBE636E5-15CD-4B40-8CC0-9FEE4F0E6EE1.html")
M33_NOTE = ("The Cortex-M33 TRM (Arm 100230) publishes no per-instruction cycle table. Armv8-M Mainline with the "
            "DSP extension runs the same Thumb-2 + DSP instructions on a 3-stage pipeline like the Cortex-M4's, so "
            "the Cortex-M4 TRM cycles are used (the M33's limited dual issue of 16-bit pairs is not modelled, "
            "so this errs slow): https://developer.arm.com/Processors/Cortex-M33")
M7_NOTE = ("The Cortex-M7 TRM (DDI 0489) publishes no per-instruction cycle table. The M7 is a 6-stage in-order "
           "superscalar core that issues up to two instructions per cycle (two ALUs, one MAC pipe, one load/store "
           "pipe with a 64-bit path) and predicts branches (BTAC): https://developer.arm.com/Processors/Cortex-M7. "
           "Model: per-class issue cost = 1 / (instructions of the class the core can start per cycle) -- ALU and "
           "SIMD pair (0.5), multiplies and loads/stores use their single pipe (1), a taken branch costs what a "
           "predicted branch costs (0 extra at the lower bound, 1 typical); pairing limits and dependencies are "
           "not modelled")

M55_SOG = ("Arm Cortex-M55 Processor Software Optimization Guide (Arm document 102692): "
           "https://developer.arm.com/documentation/102692/latest/ -- the guide Arm points to for the M55's "
           "instruction timings; its tables could not be read where this table was written, so the figures below "
           "come from the sources that follow")
M55_LLVM = ("LLVM's Cortex-M55 scheduling model, llvm/lib/Target/ARM/ARMScheduleM55.td (Arm-contributed): the M55 "
            "schedules 'a lot like the M4/M33' with an extra pipeline stage and limited dual issue of 16-bit "
            "instructions; the Helium unit has four pipes (control, load/store, integer, float/multiply); each MVE "
            "instruction takes 2 beats of 64 bits, and the first beat of one can overlap the second of the previous "
            "when they use different pipes (VLDR;VADD;VMUL;VSTR in 5 cycles, VLDR;VLDRB;VADD;VSTR in 6); "
            "VCTP/VPST/VPNOT 1 cycle on the control pipe; MispredictPenalty = 3: "
            "https://github.com/llvm/llvm-project/blob/main/llvm/lib/Target/ARM/ARMScheduleM55.td")
M55_DUAL_BEAT = ("Arm-Examples/Helium-Optimization, 'Helium optimization topics #1/#2': on the Cortex-M55 the MVE data "
                 "path is 64 bits wide (dual-beat), so each vector operation takes two clock cycles; execution of MVE "
                 "instructions of different instruction groups partially overlaps, reaching 1 instruction per cycle: "
                 "https://github.com/Arm-Examples/Helium-Optimization/blob/main/General_optimizations/"
                 "basic_optimization_topics.md")
M55_LOB = ("Armv8.1-M low-overhead loops: LE decrements the count and branches back, and caches the branch back to "
           "the loop start to speed up later iterations (QEMU commit b722636 'Implement v8.1M low-overhead-loop "
           "instructions', which never fills that cache, so the trace still lists every LE): "
           "https://github.com/qemu/qemu/commit/b7226369721896ab9ef71544e4fe95b40710e05a. Assumed here: the cache "
           "hits on every pass after the first (LE costs nothing then); the first pass costs a taken branch")
M55_UNVALIDATED = ("no published row checked: no TFLite Micro + CMSIS-NN latency of an optimised build on a Cortex-M55 "
                   "board (Alif Ensemble E7/E3, MPS3 AN547 FPGA, Himax WE2; the MLPerf Tiny v1.1-v1.3 system descriptions list no Cortex-M55 board) "
                   "was found; "
                   "FVP numbers are not cycle-accurate and are not used. The one measurement found, TFLM + CMSIS-NN "
                   "(Zephyr, GCC 12.2 -Os) on an STM32N6 at 600 MHz, person_detect 132,413,647 DWT cycles "
                   "(https://github.com/shanemmattner/embedded-agent-bridge/blob/ed19b1d910a394f289461bb2a3b3c72ad6be31af/"
                   "docs/ml-benchmark-comparison.md, 2026-02-24), is "
                   "about 20 cycles per instruction counted here (6.47 M): a memory-bound build (code and data boot "
                   "into SRAM, cache setup not stated), not a measure of the core, so it is not used as a check")


@dataclass(frozen=True)
class CoreTiming:
    core: str
    cycles: dict  # class -> issue cycles (ldm/stm/fpu_ldm: the base, plus per_register for each register)
    per_register: float
    refill_min: float  # extra cycles of a taken branch (pipeline refill P), shortest
    refill_typ: float  # ... typical
    load_pipelining: bool
    sources: tuple = field(default_factory=tuple)
    # Helium beat overlap: class -> pipe. An instruction of such a class right after one of another
    # pipe's class overlaps its first beat with the other's last and costs ``beat_overlap`` less.
    beat_pipes: dict = field(default_factory=dict)
    beat_overlap: float = 0.0
    # Low-overhead loops with the loop-end branch cached (LO_BRANCH_INFO): a taken LE/LETP costs its
    # class's cycles and no refill; each loop entry (DLS/WLS) pays one refill for the first pass.
    lob_cached: bool = False
    unvalidated: str = ""  # why no published latency checks this table ("" when published rows do)

    def to_dict(self) -> dict:
        return {"core": self.core, "cycles": dict(self.cycles), "per_register": self.per_register,
                "refill_min": self.refill_min, "refill_typ": self.refill_typ,
                "load_pipelining": self.load_pipelining, "beat_pipes": dict(self.beat_pipes),
                "beat_overlap": self.beat_overlap, "lob_cached": self.lob_cached, "sources": list(self.sources)}


# Cortex-M4 TRM Table 3-1 (P = pipeline refill, 1 to 3 cycles "depending on the alignment and width of
# the target instruction, and whether the processor manages to speculate the address early"; N = registers):
# ALU 1; MUL 1; MLA/MLS 2; SMULL/UMULL/SMLAL/UMLAL 1; DSP multiplies and dual MACs 1; SDIV/UDIV 2-12;
# LDR 2; STR 2 (1 when pipelined, see M4_PIPELINING); LDRD/STRD 1+N = 3; LDM/STM/PUSH/POP 1+N;
# B/BL/BX/BLX 1+P (1 when a conditional branch is not taken); CBZ/CBNZ 1 or 1+P; TBB/TBH 2+P;
# LDR pc 2+P; POP {..., pc} 1+N+P; IT 1 (may fold to 0). Table 7-1: VADD/VSUB/VMUL/VABS/VNEG/VCMP/
# VCVT/VMOV 1; VMLA/VFMA 3; VDIV/VSQRT 14; VLDR/VSTR 2; VLDM/VSTM/VPUSH/VPOP 1+N.
_M4_CYCLES = {
    "alu": 1, "simd": 1, "mul": 1, "mac": 2, "mull": 1, "dsp_mac": 1, "div": 7,  # 2-12: middle of the range
    "load": 2, "store": 1, "ldrd": 3, "strd": 3, "ldm": 1, "stm": 1, "branch": 1, "table_branch": 2,
    "load_pc": 2, "alu_pc": 1, "it": 1, "fpu_alu": 1, "fpu_mac": 3, "fpu_div": 14, "fpu_load": 2,
    "fpu_store": 2, "fpu_ldm": 1, "system": 1, "other": 1,
}

_M7_CYCLES = {
    "alu": 0.5, "simd": 0.5, "mul": 1, "mac": 1, "mull": 1, "dsp_mac": 1, "div": 7,
    "load": 1, "store": 1, "ldrd": 1, "strd": 1, "ldm": 0.5, "stm": 0.5, "branch": 0.5, "table_branch": 2,
    "load_pc": 2, "alu_pc": 1, "it": 0, "fpu_alu": 0.5, "fpu_mac": 1, "fpu_div": 14, "fpu_load": 1,
    "fpu_store": 1, "fpu_ldm": 0.5, "system": 1, "other": 1,
}

# Cortex-M55 (Armv8.1-M, 4-stage in-order pipeline, dual-beat Helium). Scalar classes: the Cortex-M4 TRM
# cycles (M55_LLVM: "a lot like the M4/M33 in terms of scheduling"); its dual issue of 16-bit pairs is not
# modelled (errs slow, as on the Cortex-M33). Helium: every 128-bit vector instruction takes 2 beats on one
# pipe, 2 cycles (M55_DUAL_BEAT); one right after a vector instruction of another pipe overlaps a beat
# (1 cycle); VCTP/VPST/VPNOT take 1 cycle on the control pipe (M55_LLVM). LE/LETP: 0 once the loop-end
# branch is cached; DLS/WLS: 1 cycle + the first pass's LE (1) and refill (M55_LOB).
_M55_CYCLES = {
    **_M4_CYCLES,
    "mve_load": 2, "mve_store": 2, "mve_alu": 2, "mve_mul": 2, "mve_mac": 2, "mve_fp": 2, "mve_cmp": 2,
    "mve_pred": 1, "loop_start": 2, "loop_end": 0,
}

CORES: dict[str, CoreTiming] = {
    "Cortex-M4F": CoreTiming("Cortex-M4F", _M4_CYCLES, per_register=1, refill_min=1, refill_typ=2,
                             load_pipelining=True, sources=(M4_TRM, M4_PIPELINING)),
    "Cortex-M33": CoreTiming("Cortex-M33", _M4_CYCLES, per_register=1, refill_min=1, refill_typ=2,
                             load_pipelining=True, sources=(M33_NOTE, M4_TRM, M4_PIPELINING)),
    "Cortex-M7": CoreTiming("Cortex-M7", _M7_CYCLES, per_register=0.5, refill_min=0, refill_typ=1,
                            load_pipelining=False, sources=(M7_NOTE,)),
    "Cortex-M55": CoreTiming("Cortex-M55", _M55_CYCLES, per_register=1, refill_min=1, refill_typ=3,
                             load_pipelining=True, sources=(M55_SOG, M55_LLVM, M55_DUAL_BEAT, M55_LOB, M4_TRM,
                                                            M4_PIPELINING),
                             beat_pipes=M55_PIPES, beat_overlap=1, lob_cached=True, unvalidated=M55_UNVALIDATED),
}
