# Read by workbench/emulate/firmware/library.py together with TFLM's own Makefile
# (make -f Makefile -f wb_flags.mk wb_print_flags): prints the flags TFLM compiles its library
# with, so that the harness and the exported sources are compiled and linked the same way, and how
# many objects the library build compiles (for its progress lines).
.PHONY: wb_print_flags
wb_print_flags:
	@echo 'WB_CXXFLAGS=$(CXXFLAGS)'
	@echo 'WB_CCFLAGS=$(CCFLAGS)'
	@echo 'WB_INCLUDES=$(INCLUDES)'
	@echo 'WB_LDFLAGS=$(LDFLAGS)'
	@echo 'WB_MICROLITE_LIBS=$(MICROLITE_LIBS)'
	@echo 'WB_CORE_OPTIMIZATION_LEVEL=$(CORE_OPTIMIZATION_LEVEL)'
	@echo 'WB_KERNEL_OPTIMIZATION_LEVEL=$(KERNEL_OPTIMIZATION_LEVEL)'
	@echo 'WB_GENDIR=$(GENDIR)'
	@echo 'WB_LIB=$(MICROLITE_LIB_PATH)'
	@echo 'WB_OBJECTS=$(words $(sort $(MICROLITE_LIB_OBJS) $(MICROLITE_KERNEL_OBJS) $(MICROLITE_THIRD_PARTY_OBJS) $(MICROLITE_THIRD_PARTY_KERNEL_OBJS) $(MICROLITE_CUSTOM_OP_OBJS)))'
# The library's sources after TFLM's own kernel specialisation (an OPTIMIZED_KERNEL_DIR file
# replaces the reference file of the same name), one group per compile rule of TFLM's Makefile, with
# the optimisation level that rule adds: the per-object build compiles each one exactly as the rule
# `$(CXX or CC) $(CXXFLAGS or CCFLAGS) <level> $(INCLUDES) -c <source>` would.
	@echo 'WB_SRCS_CORE=$(CORE_OPTIMIZATION_LEVEL)|$(MICROLITE_CC_SRCS)'
	@echo 'WB_SRCS_KERNEL=$(KERNEL_OPTIMIZATION_LEVEL)|$(MICROLITE_CC_KERNEL_SRCS)'
	@echo 'WB_SRCS_THIRD_PARTY=$(CORE_OPTIMIZATION_LEVEL)|$(THIRD_PARTY_CC_SRCS)'
	@echo 'WB_SRCS_THIRD_PARTY_KERNEL=$(THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL)|$(THIRD_PARTY_KERNEL_CC_SRCS)'
	@echo 'WB_CUSTOM_OP_OBJS=$(MICROLITE_CUSTOM_OP_OBJS)'
