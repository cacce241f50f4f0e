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
