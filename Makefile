# Ambit build and test entry points. Binaries land in ./bin.
#
#   make demo    build, bring up samples/demo in local mode, send traffic, tear down
#   make test    everything CI runs: vet, unit tests, fuzz smoke, e2e, interop, cluster tier
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/ambit-mesh/ambit/version.Version=$(VERSION)
CNI_PLUGINS := github.com/containernetworking/plugins/plugins/main/bridge \
               github.com/containernetworking/plugins/plugins/ipam/host-local \
               github.com/containernetworking/plugins/plugins/main/loopback
UNIT_PKGS = $$(go list ./... | grep -v -e /test/e2e -e /test/cluster)

.PHONY: deps build demo test vet k8s-bins istiod-bin test-unit test-fuzz test-e2e test-interop test-cluster bench bench-cp bench-cp-apiserver bench-tools clean

deps:
	@./scripts/install-deps.sh

## build: the ambit binaries plus the reference CNI plugins (built from their Go module, never downloaded)
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/ambit ./cmd/ambit-cni ./cmd/ambit-ztunnel
	go build -trimpath -ldflags '-s -w' -o $(BIN)/ $(CNI_PLUGINS)

demo: deps build
	./scripts/demo.sh

test: build vet test-unit test-fuzz test-e2e test-interop test-cluster

vet:
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files -co --exclude-standard '*.go'); exit 1; }
	go vet ./...

## manifests: the upstream Istio and Gateway API CRDs `ambit install` applies, from the Go module cache at go.mod's versions, into manifests/crds/ (gitignored; embedded by an ambit binary built after it)
.PHONY: manifests images
manifests:
	@./hack/crds.sh

## images: static binaries on an empty base, as docker-archive tarballs in bin/images/ for `ctr -n k8s.io images import`: $(IMAGE_HUB)/ambit:$(VERSION) (control plane, node agent, ambit-cni) and $(IMAGE_HUB)/ambit-ztunnel:$(VERSION)
IMAGE_HUB ?= ambit.local
images: manifests
	@mkdir -p $(BIN)/images
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/ambit ./cmd/ambit-cni ./cmd/ambit-ztunnel
	cd hack/imgbuild && CGO_ENABLED=0 go build -trimpath -o $(BIN)/imgbuild .
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(BIN)/imgbuild -ref $(IMAGE_HUB)/ambit:$(VERSION) -out $(BIN)/images/ambit.tar \
	  -label org.opencontainers.image.version=$(VERSION) $(BIN)/ambit=/usr/local/bin/ambit $(BIN)/ambit-cni=/usr/local/bin/ambit-cni
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(BIN)/imgbuild -ref $(IMAGE_HUB)/ambit-ztunnel:$(VERSION) -out $(BIN)/images/ambit-ztunnel.tar \
	  -label org.opencontainers.image.version=$(VERSION) $(BIN)/ambit-ztunnel=/usr/local/bin/ambit-ztunnel

## k8s-bins: etcd, kube-apiserver and kube-controller-manager built from the Go module proxy, cached under $$HOME/.cache/k8s-testbins
k8s-bins:
	@COMPONENTS="kube-apiserver kube-controller-manager" ./hack/k8s-testbins.sh

## istiod-bin: Istio's istiod (pilot-discovery) at test/interop's istio.io/istio version, built from the module proxy, cached under $$HOME/.cache/istiod-bin
istiod-bin:
	@./hack/istiod-bin.sh

# Unit tests include the envtest tier (internal/kubetest: a real etcd and kube-apiserver).
test-unit:
	AMBIT_K8S_BIN_DIR=$$(COMPONENTS="kube-apiserver kube-controller-manager" ./hack/k8s-testbins.sh) go test -count=1 -timeout 15m $(UNIT_PKGS)
	cd hack/imgbuild && go test -count=1 ./...

test-fuzz:
	FUZZTIME=$${FUZZTIME:-10s} ./scripts/fuzz-smoke.sh

test-e2e: build
	AMBIT_BIN_DIR=$(BIN) go test -count=1 -v -timeout 20m ./test/e2e/

## test-cluster: the cluster tier (root; about 110 s once the binaries are cached): a real single-node Kubernetes (internal/clustertest: kubelet,
## containerd and runc, CNI bridge), `ambit install` from make images, the demo enrolled live and released, a node power cut, ambit uninstall
CLUSTER_COMPONENTS := kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
test-cluster: build images
	AMBIT_K8S_BIN_DIR=$$(COMPONENTS="$(CLUSTER_COMPONENTS)" ./hack/k8s-testbins.sh) AMBIT_BIN_DIR=$(BIN) \
	  go test -count=1 -v -timeout 20m ./test/cluster/

test-interop:
	@if ls test/interop/*_test.go >/dev/null 2>&1; then \
	  AMBIT_K8S_BIN_DIR=$$(COMPONENTS="kube-apiserver kube-controller-manager" ./hack/k8s-testbins.sh) && \
	  AMBIT_ISTIOD_BIN=$$(./hack/istiod-bin.sh) && export AMBIT_K8S_BIN_DIR AMBIT_ISTIOD_BIN && \
	  cd test/interop && go test -count=1 -v -timeout 10m ./...; fi

## bench-tools: fortio (from its Go module), the bench's pod helper, and Istio's Go HBONE pair (from test/interop) into bin/
bench-tools:
	@mkdir -p $(BIN)
	@test -x $(BIN)/fortio || GOBIN=$(BIN) go install fortio.org/fortio@v1.66.5
	go build -o $(BIN)/ambit-benchtool ./bench/tool
	cd test/interop && go build -o $(BIN)/istio-hbone-pair ./cmd/istio-hbone-pair

## bench: the data-path benchmark (direct, Ambit with ztunnel --workers 2 and 1, stunnel, Istio's Go HBONE), report and raw JSON to bench/results/
bench: deps build bench-tools
	go run ./bench -bin $(BIN) -out bench/results

## bench-cp: the control-plane scale benchmark, in process (50,000 pods, 5,000 services, two delta xDS clients over loopback gRPC), report and raw JSON to bench/results/cpscale-*
bench-cp:
	go run ./bench/cpscale -out bench/results

## bench-cp-apiserver: the same through a real kube-apiserver and etcd (internal/kubetest) and the Kubernetes config source (10,000 pods, 1,000 services), report and raw JSON to bench/results/cpscale-apiserver-*
bench-cp-apiserver:
	AMBIT_K8S_BIN_DIR=$$(COMPONENTS="kube-apiserver kube-controller-manager" ./hack/k8s-testbins.sh) go run ./bench/cpscale -backend apiserver -out bench/results

clean:
	rm -rf $(BIN)
