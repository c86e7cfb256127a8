package ztunnel

import (
	"fmt"
	"sync"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// isPort is a Service or PortList port: service_port -> target_port.
func isPort(sp, tp uint32) *workloadapi.Port {
	return &workloadapi.Port{ServicePort: sp, TargetPort: tp}
}

// isService is a Service address in namespace ns with hostname host.
func isService(ns, host string, ports ...*workloadapi.Port) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: host, Namespace: ns, Hostname: host, Ports: ports,
	}}}
}

// isWorkload is a pod in namespace demo that belongs to the Services in
// svcs (namespace/hostname -> that pod's own ports for the Service; nil
// means no per-workload ports).
func isWorkload(uid string, svcs map[string][]*workloadapi.Port) *workloadapi.Workload {
	m := map[string]*workloadapi.PortList{}
	for k, ports := range svcs {
		m[k] = &workloadapi.PortList{Ports: ports}
	}
	return &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "demo", Addresses: [][]byte{{10, 0, 0, 7}},
		Status: workloadapi.WorkloadStatus_HEALTHY, Services: m,
	}
}

// isUpdate applies upserts and removals to x; full says whether they make
// up a full state. Every Update call of this file goes through here.
func isUpdate(x *Index, ups []*workloadapi.Address, removed []string, full bool) {
	x.Update(ups, removed, full)
}

func TestGuessInboundService(t *testing.T) {
	const (
		echo  = "echo.demo.svc.cluster.local"
		alpha = "alpha.demo.svc.cluster.local"
		zeta  = "zeta.demo.svc.cluster.local"
		named = "named.demo.svc.cluster.local"
		other = "other.demo.svc.cluster.local"
	)
	cases := []struct {
		name      string
		services  []*workloadapi.Address
		wl        *workloadapi.Workload // nil: no workload
		port      uint16
		authority string
		want      string // ServiceKey, or "" for nil
	}{
		{
			name:     "one service matching by target port",
			services: []*workloadapi.Address{isService("demo", echo, isPort(80, 8080))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + echo: nil}),
			port:     8080, want: "demo/" + echo,
		},
		{
			name:     "one service, port it does not target",
			services: []*workloadapi.Address{isService("demo", echo, isPort(80, 8080))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + echo: nil}),
			port:     9090, want: "",
		},
		{
			name: "two services with different target ports: first port",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8080)),
				isService("demo", zeta, isPort(9090, 9090)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + alpha: nil, "demo/" + zeta: nil}),
			port: 8080, want: "demo/" + alpha,
		},
		{
			name: "two services with different target ports: second port",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8080)),
				isService("demo", zeta, isPort(9090, 9090)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + alpha: nil, "demo/" + zeta: nil}),
			port: 9090, want: "demo/" + zeta,
		},
		{
			name: "two services with the same target port: lowest namespace/hostname",
			services: []*workloadapi.Address{
				isService("demo", zeta, isPort(80, 8080)),
				isService("demo", alpha, isPort(8000, 8080)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + zeta: nil, "demo/" + alpha: nil}),
			port: 8080, want: "demo/" + alpha,
		},
		{
			name:     "named port resolved by the workload's port list",
			services: []*workloadapi.Address{isService("demo", named, isPort(80, 0))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + named: {isPort(80, 8081)}}),
			port:     8081, want: "demo/" + named,
		},
		{
			name:     "named port, another port of the pod",
			services: []*workloadapi.Address{isService("demo", named, isPort(80, 0))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + named: {isPort(80, 8081)}}),
			port:     8080, want: "",
		},
		{
			name:     "named port the workload does not map",
			services: []*workloadapi.Address{isService("demo", named, isPort(80, 0))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + named: nil}),
			port:     8081, want: "",
		},
		{
			name: "named port on one service, numeric target on the other",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8080)),
				isService("demo", named, isPort(81, 0)),
			},
			wl: isWorkload("w", map[string][]*workloadapi.Port{
				"demo/" + alpha: nil, "demo/" + named: {isPort(81, 9000)},
			}),
			port: 9000, want: "demo/" + named,
		},
		{
			name:     "no service selects the workload",
			services: []*workloadapi.Address{isService("demo", echo, isPort(80, 8080))},
			wl:       isWorkload("w", nil),
			port:     8080, want: "",
		},
		{
			name: "workload names a service the index does not have yet",
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + echo: {isPort(80, 8080)}}),
			port: 8080, want: "",
		},
		{
			name: "authority hostname picks among services on the same port",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8080)),
				isService("demo", zeta, isPort(80, 8080)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + alpha: nil, "demo/" + zeta: nil}),
			port: 8080, authority: zeta, want: "demo/" + zeta,
		},
		{
			name: "authority hostname prefers the workload's namespace",
			services: []*workloadapi.Address{
				isService("aaa", echo, isPort(80, 8080)),
				isService("demo", echo, isPort(80, 8080)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"aaa/" + echo: nil, "demo/" + echo: nil}),
			port: 8080, authority: echo, want: "demo/" + echo,
		},
		{
			name: "authority hostname of a named-port service",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8081)),
				isService("demo", named, isPort(80, 0)),
			},
			wl: isWorkload("w", map[string][]*workloadapi.Port{
				"demo/" + alpha: nil, "demo/" + named: {isPort(80, 8081)},
			}),
			port: 8081, authority: named, want: "demo/" + named,
		},
		{
			name: "authority hostname of a known service not selecting the pod (as upstream)",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8080)),
				isService("elsewhere", other, isPort(80, 8080)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + alpha: nil}),
			port: 8080, authority: other, want: "elsewhere/" + other,
		},
		{
			name:     "unknown authority hostname falls back to the port guess",
			services: []*workloadapi.Address{isService("demo", echo, isPort(80, 8080))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + echo: nil}),
			port:     8080, authority: "bogus.example.com", want: "demo/" + echo,
		},
		{
			name: "authority hostname whose service does not serve the port falls back",
			services: []*workloadapi.Address{
				isService("demo", alpha, isPort(80, 8080)),
				isService("demo", zeta, isPort(80, 9999)),
			},
			wl:   isWorkload("w", map[string][]*workloadapi.Port{"demo/" + alpha: nil, "demo/" + zeta: nil}),
			port: 8080, authority: zeta, want: "demo/" + alpha,
		},
		{
			name:     "nil workload",
			services: []*workloadapi.Address{isService("demo", echo, isPort(80, 8080))},
			port:     8080, want: "",
		},
		{
			name:     "nil workload with authority hostname",
			services: []*workloadapi.Address{isService("demo", echo, isPort(80, 8080))},
			port:     8080, authority: echo, want: "",
		},
		{
			name:     "zero target port",
			services: []*workloadapi.Address{isService("demo", named, isPort(80, 0))},
			wl:       isWorkload("w", map[string][]*workloadapi.Port{"demo/" + named: nil}),
			port:     0, want: "",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex()
			ups := append([]*workloadapi.Address(nil), tc.services...)
			if tc.wl != nil {
				ups = append(ups, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: tc.wl}})
			}
			isUpdate(x, ups, nil, true)
			var dst *workloadapi.Workload
			if tc.wl != nil {
				dst = x.Workload(tc.wl.GetUid())
				if dst == nil {
					t.Fatal("workload not indexed")
				}
			}
			// Map iteration order varies between calls; the answer must not.
			for i := 0; i < 50; i++ {
				got := ""
				if s := x.GuessInboundService(dst, tc.port, tc.authority); s != nil {
					got = ServiceKey(s)
				}
				if got != tc.want {
					t.Fatalf("call %d: GuessInboundService(port %d, authority %q) = %q, want %q", i, tc.port, tc.authority, got, tc.want)
				}
			}
		})
	}
}

// TestGuessInboundServiceConcurrent runs guesses while the index changes
// (meant for -race).
func TestGuessInboundServiceConcurrent(t *testing.T) {
	const host = "echo.demo.svc.cluster.local"
	x := NewIndex()
	wl := isWorkload("w", map[string][]*workloadapi.Port{"demo/" + host: nil})
	isUpdate(x, []*workloadapi.Address{
		isService("demo", host, isPort(80, 8080)),
		{Type: &workloadapi.Address_Workload{Workload: wl}},
	}, nil, true)
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			isUpdate(x, []*workloadapi.Address{
				isService("demo", host, isPort(80, 8080)),
				isService("other", fmt.Sprintf("s%d.other", i%7), isPort(80, 8080)),
			}, []string{fmt.Sprintf("other/s%d.other", (i+3)%7)}, false)
		}
	}()
	var readers sync.WaitGroup
	for g := 0; g < 4; g++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; i < 2000; i++ {
				if x.GuessInboundService(wl, 8080, []string{"", host, "s1.other"}[i%3]) == nil {
					t.Error("no service guessed")
					return
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	<-writerDone
}
