package main

import (
	"fmt"
	"strings"
	"time"
)

// Targets of the control plane (docs/DESIGN.md §6).
const (
	targetFirstPush = time.Second
	targetChangeP99 = 100 * time.Millisecond
	targetRSSMB     = 2048
	grpcDefaultMax  = 4 << 20 // gRPC's default receive limit, which ztunnels keep
)

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func mb(b int) string { return fmt.Sprintf("%.2f MiB (%d bytes)", float64(b)/(1<<20), b) }

// render writes the markdown report of a run; note, if not empty, is a
// paragraph of context (what changed since the last run, say).
func render(r *Result, note string) string {
	var b strings.Builder
	apiserver := r.Mode == "apiserver"
	if apiserver {
		fmt.Fprintf(&b, "# Ambit control-plane scale benchmark through a real API server, %s\n\n", r.Started.Format(time.RFC3339))
		fmt.Fprintf(&b, "**Backend: API server.** `go run ./bench/cpscale -backend apiserver` (`make bench-cp-apiserver`), %s. "+
			"A synthetic mesh is generated in memory and created through the API (parallel writers; a pod is created, then its status "+
			"(phase Running, podIP, hostIP; spec.nodeName set at creation) is written through the status subresource, as a kubelet would); "+
			"then the Kubernetes config source (controlplane/kubesource: informers, core kinds as protobuf) feeds the real controller "+
			"(controlplane/controller), which publishes to the real delta xDS server (controlplane/xds), served by gRPC on a loopback listener "+
			"(plaintext; the ADS stream interceptor admits every caller). ", r.Backend)
	} else {
		fmt.Fprintf(&b, "# Ambit control-plane scale benchmark, %s\n\n", r.Started.Format(time.RFC3339))
		fmt.Fprintf(&b, "**Backend: in process.** `go run ./bench/cpscale` (`make bench-cp`), %s. A synthetic mesh is generated in memory and fed through a config source "+
			"(controlplane/config Source + Syncer) into the real controller (controlplane/controller), which publishes to the real delta xDS server "+
			"(controlplane/xds), served by gRPC on a loopback listener (plaintext; the ADS stream interceptor admits every caller). ", r.Backend)
	}
	b.WriteString("Two delta ADS clients in a child process subscribe as a ztunnel does (wildcard, address and authorization types), decode every resource, " +
		"acknowledge every response and keep gRPC's default 4 MiB receive limit. The control plane's CPU is getrusage(RUSAGE_SELF) of the benchmark " +
		"process and its memory VmRSS/VmHWM of /proc/self/status (the clients are another process). ")
	if apiserver {
		b.WriteString("That process also holds the generated mesh (the generator's copy, which the changes are made from: about the baseline below; " +
			"the informers' cache is a second copy, the control plane's own) and the bench's API writers' client (idle from the control plane's start, " +
			"but for the changes' patch requests); etcd and kube-apiserver are separate processes, measured from /proc/<pid>/status and /proc/<pid>/stat. ")
	} else {
		b.WriteString("The process also holds the config objects, as an informer cache would, and the generator's source. ")
	}
	fmt.Fprintf(&b, "Machine: %d CPUs (GOMAXPROCS %d), shared; load average (1, 5, 15 min) at start %s, at the end %s; %s. Whole run %.0f s.\n\n",
		r.Host.CPUs, r.Host.GOMAXPROC, r.Host.LoadAvg, r.Host.LoadEnd, r.Host.GoVersion, r.Elapsed)
	if note != "" {
		b.WriteString(note + "\n\n")
	}

	s := r.Spec
	b.WriteString("## Mesh\n\n| objects | count |\n|---|---|\n")
	fmt.Fprintf(&b, "| pods (Running, with podIP, spec.nodeName, redirection annotation) | %d application + %d waypoint |\n", s.Pods, s.Waypoints)
	fmt.Fprintf(&b, "| services (each selecting its app's pods) | %d + %d waypoint |\n", s.Services, s.Waypoints)
	fmt.Fprintf(&b, "| ambient namespaces / nodes | %d / %d |\n", s.Namespaces, s.Nodes)
	fmt.Fprintf(&b, "| config objects in the source (with service accounts, policies, Gateways) | %d |\n", r.Objects)
	if apiserver {
		fmt.Fprintf(&b, "| the API server's own objects the control plane serves or reads too (namespaces, Service default/kubernetes) | %d |\n", r.Extra)
	}
	fmt.Fprintf(&b, "| served: workloads / services / authorization policies | %d / %d / %d |\n\n", r.Expected.Workloads, r.Expected.Services, r.Expected.Policies)

	if st := r.Setup; st != nil {
		b.WriteString("## Setup (before the clock)\n\n| step | value |\n|---|---|\n")
		fmt.Fprintf(&b, "| etcd + kube-apiserver %s ready | %.1f s |\n", st.Version, st.StartSeconds)
		fmt.Fprintf(&b, "| %d CRDs (Istio's, Gateway API's experimental channel) installed and Established | %.1f s |\n", st.CRDs, st.CRDSeconds)
		fmt.Fprintf(&b, "| %d objects created with %d requests by %d writers (client QPS %.0f, burst %d) | %.1f s (%.0f requests/s) |\n\n",
			st.Objects, st.Requests, st.Writers, st.QPS, st.Burst, st.CreateSeconds, float64(st.Requests)/st.CreateSeconds)
		for _, n := range st.Notes {
			b.WriteString(n + ".\n\n")
		}
	}

	fp := r.FirstPush
	b.WriteString("## First push (cold start)\n\n")
	if apiserver {
		b.WriteString("Both clients are connected (and have had the empty first answer) when the Kubernetes source and the controller start, " +
			"with the whole mesh in the API server: the time includes the informers' lists and watches; a client has the push once it holds " +
			"every workload, service and policy (names checked by digest).\n\n")
	} else {
		b.WriteString("Both clients are connected (and have had the empty first answer) when the controller starts with the whole mesh in its source; " +
			"a client has the push once it holds every workload, service and policy (names checked by digest).\n\n")
	}
	b.WriteString("| step | seconds from start |\n|---|---|\n")
	fmt.Fprintf(&b, "| source sent every object (HasSynced) | %.3f |\n", fp.SourceSyncedSeconds)
	fmt.Fprintf(&b, "| controller's first build published (Ready); the build itself took %.0f ms | %.3f |\n", fp.BuildMs, fp.ReadySeconds)
	for i, c := range fp.ClientSeconds {
		fmt.Fprintf(&b, "| client %d holds everything (%d responses) | %.3f |\n", i, fp.Messages[i], c)
	}
	fmt.Fprintf(&b, "| **both clients** | **%.3f** |\n\n", fp.Seconds)
	fmt.Fprintf(&b, "Control-plane CPU to get there: %.2f s. Memory then: VmRSS %.0f MB, Go heap in use %.0f MB.\n\n", fp.CPUSeconds, fp.Memory.RSSMB, fp.Memory.HeapMB)

	fmt.Fprintf(&b, "## A new client joining the warm control plane\n\nAfter the changes, a third client connects (a new node's ztunnel): "+
		"%.3f s to hold everything, in %d responses; control-plane CPU %.3f s.\n\n", r.NewClient.Seconds, r.NewClient.Messages, r.NewClient.CPUSeconds)

	c := r.Changes
	b.WriteString("## Single-pod changes\n\n")
	if apiserver {
		fmt.Fprintf(&b, "%d changes, one at a time, alternating a pod's IP (a JSON merge patch of the pod's status subresource, as the kubelet "+
			"writes it) and its `version` label (a merge patch of its metadata; the label is the workload's canonical revision), pods taken "+
			"across namespaces; each is timed from the API write's response to its receipt by the later of the two clients (the watch event "+
			"to the informer, the controller's debounce, 20 ms, and the push).\n\n", len(c.Items))
	} else {
		fmt.Fprintf(&b, "%d changes, one at a time, alternating a pod's IP and its `version` label (which is the workload's canonical revision), "+
			"pods taken across namespaces; each is timed from the return of the source's Update to its receipt by the later of the two clients (the controller's "+
			"debounce, 20 ms, is part of it).\n\n", len(c.Items))
	}
	b.WriteString("| figure | value |\n|---|---|\n")
	fmt.Fprintf(&b, "| p50 / p99 / max / mean to both clients | %.1f / %.1f / %.1f / %.1f ms |\n", c.P50Ms, c.P99Ms, c.MaxMs, c.MeanMs)
	if apiserver {
		fmt.Fprintf(&b, "| the API write itself (request to response; not in the figure above) p50 / max | %.1f / %.1f ms |\n", c.WriteMsP50, c.WriteMsMax)
	}
	fmt.Fprintf(&b, "| control-plane CPU per change | %.1f ms |\n", c.CPUSecondsPerChange*1000)
	fmt.Fprintf(&b, "| builds during the changes | %d |\n", c.Builds)
	fmt.Fprintf(&b, "| build duration p50 / max (controller stats) | %.1f / %.1f ms |\n\n", c.BuildMsP50, c.BuildMsMax)

	m := r.MaxMessage
	b.WriteString("## Messages\n\n")
	fmt.Fprintf(&b, "Largest message the server sent: %s, of %d messages; largest response each client received: ", mb(m.ServerMaxBytes), m.ServerMessages)
	for i, v := range m.ClientMaxBytes {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "client %d %s", i, mb(v))
	}
	fmt.Fprintf(&b, ". gRPC's default receive limit is %s. Client 0's first push took %d address responses.\n\n", mb(grpcDefaultMax), m.FirstPushAddressResponses)

	b.WriteString("## Memory\n\n| when | VmRSS MB | VmHWM MB | Go heap in use MB | Go runtime from the OS MB |\n|---|---|---|---|---|\n")
	for _, row := range []struct {
		when string
		m    Memory
	}{{"mesh generated, control plane not started (peak reset here)", r.Baseline}, {"after the first push", fp.Memory}, {"at the end", r.Memory}} {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f |\n", row.when, row.m.RSSMB, row.m.HWMMB, row.m.HeapMB, row.m.SysMB)
	}
	fmt.Fprintf(&b, "\nThe client process used %.1f s of CPU over the run (not counted above). The controller built %d times; NACKs: %d.\n\n", r.ClientCPUSeconds, r.Builds, r.Rejections)

	if len(r.Processes) > 0 {
		b.WriteString("## The API server and etcd (separate processes)\n\n" +
			"VmRSS at each point, the peak (VmHWM, since the process started: it includes creating the mesh), and the CPU (user+system, /proc/<pid>/stat) " +
			"each phase took.\n\n| process | pid | RSS at control-plane start / after first push / at end MB | peak VmHWM MB | CPU during setup / first push / changes s |\n|---|---|---|---|---|\n")
		byName := map[string]map[string]ProcessSample{}
		var names []string
		for _, p := range r.Processes {
			if byName[p.Name] == nil {
				byName[p.Name] = map[string]ProcessSample{}
				names = append(names, p.Name)
			}
			byName[p.Name][p.When] = p
		}
		for _, n := range names {
			s := byName[n]
			st, fp, ch, end := s[phaseStart], s[phaseFirstPush], s[phaseChanges], s[phaseEnd]
			fmt.Fprintf(&b, "| %s | %d | %.0f / %.0f / %.0f | %.0f | %.1f / %.2f / %.2f |\n", n, end.PID, st.RSSMB, fp.RSSMB, end.RSSMB, end.HWMMB,
				st.CPUSeconds, fp.CPUSeconds-st.CPUSeconds, ch.CPUSeconds-fp.CPUSeconds)
		}
		b.WriteString("\n")
	}

	v := r.Verified
	b.WriteString("## Correctness\n\n")
	if v.OK {
		fmt.Fprintf(&b, "At the end, clients %v each held exactly the model's state for the mesh's final state (model.Build and "+
			"model.BuildAuthorizations, computed apart from the control plane): %d address and %d authorization resources, compared by a digest "+
			"of every resource's name and deterministic encoding.\n\n", v.Clients, v.Addresses, v.Policies)
	} else {
		b.WriteString("Not verified.\n\n")
	}

	b.WriteString("## Targets\n\n")
	if apiserver {
		fmt.Fprintf(&b, "The targets are stated for 50,000 pods (the in-process run); here they are applied to this run's %d pods through the API server, "+
			"the control plane's memory being this process's (which also holds the generator's copy of the mesh and the writers' client).\n\n", s.Pods)
	}
	b.WriteString("| figure | target | measured | met? |\n|---|---|---|---|\n")
	fmt.Fprintf(&b, "| first full push to both clients, cold start | < %v | %.3f s | %s |\n", targetFirstPush, fp.Seconds, metStr(fp.Seconds < targetFirstPush.Seconds()))
	fmt.Fprintf(&b, "| first full push to a new ztunnel (warm control plane) | < %v | %.3f s | %s |\n", targetFirstPush, r.NewClient.Seconds, metStr(r.NewClient.Seconds < targetFirstPush.Seconds()))
	fmt.Fprintf(&b, "| a pod change reaching every client, p99 | < %v | %.1f ms | %s |\n", targetChangeP99, c.P99Ms, metStr(c.P99Ms < float64(targetChangeP99.Milliseconds())))
	peak := max(r.Memory.HWMMB, r.Memory.RSSMB)
	fmt.Fprintf(&b, "| control-plane memory (peak VmHWM since the mesh was generated) | < 2 GB | %.0f MB | %s |\n", peak, metStr(peak < targetRSSMB))
	fmt.Fprintf(&b, "| largest xDS message | <= 4 MiB (gRPC default limit) | %.2f MiB | %s |\n", float64(m.ServerMaxBytes)/(1<<20), metStr(m.ServerMaxBytes <= grpcDefaultMax))
	return b.String()
}
