# Ambit build and test entry points. Everything lands in ./bin.
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/ambit-mesh/ambit/version.Version=$(VERSION)
CNI_PLUGINS := github.com/containernetworking/plugins/plugins/main/bridge \
               github.com/containernetworking/plugins/plugins/ipam/host-local \
               github.com/containernetworking/plugins/plugins/main/loopback

.PHONY: build demo test test-unit test-e2e bench clean

## build: the ambit binaries plus the reference CNI plugins (built from their Go module, never downloaded)
build:
	@mkdir -p $(BIN)
	go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/ambit ./cmd/ambit-cni
	go build -trimpath -ldflags '-s -w' -o $(BIN)/ $(CNI_PLUGINS)

clean:
	rm -rf $(BIN)
