# The Microkit convention on top of `tools image` / `tools qemu`:
#
#   make MICROKIT_SDK=/path/to/microkit-sdk-2.3.0 MICROKIT_BOARD=qemu_virt_aarch64 MICROKIT_CONFIG=debug
#   make MICROKIT_SDK=... MICROKIT_BOARD=x86_64_generic qemu
#
# builds the PD ELFs and $(BUILD_DIR)/loader.img (x86_64: and sel4_32.elf);
# `make qemu` boots it with a free-page-reporting virtio-balloon and checks
# that the host gets the memory back.

MICROKIT_BOARD ?= qemu_virt_aarch64
MICROKIT_CONFIG ?= debug
SYSTEM ?= system.xml
BUILD_DIR ?= target/microkit/$(MICROKIT_BOARD)-$(MICROKIT_CONFIG)
CARGO ?= cargo
TOOLS = $(CARGO) run --quiet --release -p tools --

ifeq ($(strip $(MICROKIT_SDK)),)
$(error MICROKIT_SDK is not set: make MICROKIT_SDK=/path/to/microkit-sdk-2.3.0 [MICROKIT_BOARD=qemu_virt_aarch64|x86_64_generic] [MICROKIT_CONFIG=debug|release])
endif
export MICROKIT_SDK

.PHONY: all image qemu clean

all: image

image:
	$(TOOLS) image --board $(MICROKIT_BOARD) --config $(MICROKIT_CONFIG) --system $(SYSTEM) --out $(BUILD_DIR)

qemu:
	$(TOOLS) qemu --board $(MICROKIT_BOARD) --config $(MICROKIT_CONFIG) --system $(SYSTEM) --out $(BUILD_DIR) $(QEMU_ARGS)

clean:
	rm -rf $(BUILD_DIR)
