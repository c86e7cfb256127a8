package ztunnel

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
)

// ConfigDump is what the admin endpoint's /config_dump returns.
type ConfigDump struct {
	Workloads []WorkloadDump `json:"workloads"`
	Services  []ServiceDump  `json:"services"`
	Pods      []PodInfo      `json:"pods"` // pods this ztunnel proxies
	// Policies are the istio.security.Authorization resources, in their
	// protobuf JSON form.
	Policies []json.RawMessage `json:"policies"`
	// Certificates are the workload certificates of the pods served.
	Certificates []CertDump `json:"certificates"`
}

// CertDump describes one workload certificate.
type CertDump struct {
	Identity  string    `json:"identity"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitempty"`
	NotAfter  time.Time `json:"notAfter,omitempty"`
	State     string    `json:"state"` // Available, or the error
}

// WorkloadDump is one workload as ztunnel sees it.
type WorkloadDump struct {
	UID            string   `json:"uid"`
	Name           string   `json:"name"`
	Namespace      string   `json:"namespace"`
	Addresses      []string `json:"addresses"`
	Node           string   `json:"node"`
	Identity       string   `json:"identity"`
	TunnelProtocol string   `json:"protocol"`
	Services       []string `json:"services,omitempty"`
	Policies       []string `json:"policies,omitempty"` // selector policies that apply
	Waypoint       string   `json:"waypoint,omitempty"` // namespace/hostname of its workload waypoint
}

// ServiceDump is one service as ztunnel sees it.
type ServiceDump struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Hostname  string   `json:"hostname"`
	VIPs      []string `json:"vips"`
	Ports     []string `json:"ports"`
	Waypoint  string   `json:"waypoint,omitempty"` // namespace/hostname of its waypoint
}

// waypointName shows a waypoint address as namespace/hostname.
func waypointName(gw *workloadapi.GatewayAddress) string {
	if h := gw.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	if a := gw.GetAddress(); a != nil {
		if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
			return ip.String()
		}
	}
	return ""
}

// Dump returns the current view.
func (z *Ztunnel) Dump() ConfigDump {
	d := ConfigDump{Workloads: []WorkloadDump{}, Services: []ServiceDump{}, Pods: z.Pods(), Policies: []json.RawMessage{}}
	for _, p := range z.cfg.Index.Policies() {
		if b, err := protojson.Marshal(p); err == nil {
			d.Policies = append(d.Policies, b)
		}
	}
	seen := map[string]bool{}
	d.Certificates = []CertDump{}
	for _, p := range d.Pods {
		if seen[p.Identity] {
			continue
		}
		seen[p.Identity] = true
		cd := CertDump{Identity: p.Identity, State: "Available"}
		id, err := identity.ParseSPIFFE(p.Identity)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var c *caclient.Cert
			c, err = z.cfg.Certs.Get(ctx, id)
			cancel()
			if err == nil {
				cd.Serial, cd.NotBefore, cd.NotAfter = c.Leaf.SerialNumber.Text(16), c.Leaf.NotBefore, c.Leaf.NotAfter
			}
		}
		if err != nil {
			cd.State = err.Error()
		}
		d.Certificates = append(d.Certificates, cd)
	}
	for _, w := range z.cfg.Index.Workloads() {
		wd := WorkloadDump{UID: w.GetUid(), Name: w.GetName(), Namespace: w.GetNamespace(), Node: w.GetNode(),
			Identity: Identity(w).String(), TunnelProtocol: w.GetTunnelProtocol().String(), Policies: w.GetAuthorizationPolicies(),
			Waypoint: waypointName(w.GetWaypoint())}
		for _, a := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(a); ok {
				wd.Addresses = append(wd.Addresses, ip.String())
			}
		}
		for s := range w.GetServices() {
			wd.Services = append(wd.Services, s)
		}
		d.Workloads = append(d.Workloads, wd)
	}
	for _, s := range z.cfg.Index.Services() {
		sd := ServiceDump{Name: s.GetName(), Namespace: s.GetNamespace(), Hostname: s.GetHostname(), Waypoint: waypointName(s.GetWaypoint())}
		for _, a := range s.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
				sd.VIPs = append(sd.VIPs, ip.String())
			}
		}
		for _, p := range s.GetPorts() {
			sd.Ports = append(sd.Ports, portString(p))
		}
		d.Services = append(d.Services, sd)
	}
	return d
}

func portString(p *workloadapi.Port) string {
	b, _ := json.Marshal(map[string]uint32{"port": p.GetServicePort(), "targetPort": p.GetTargetPort()})
	return string(b)
}

// AdminHandler serves /config_dump, /debug/pprof/ and /healthz/ready; ready reports
// readiness (connected to the control plane and the node agent).
func (z *Ztunnel) AdminHandler(ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(z.Dump())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
