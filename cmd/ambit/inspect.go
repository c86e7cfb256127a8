package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/local"
	"github.com/ambit-mesh/ambit/waypoint"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// configDump reads a node's ztunnel view (local mode).
func configDump(stateDir, node string) (*ztunnel.ConfigDump, error) {
	body, err := local.AdminGet(stateDir, node, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d ztunnel.ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("ztunnel config dump of %s: %w", node, err)
	}
	return &d, nil
}

func printAs(out io.Writer, format string, v any, table func(*tabwriter.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	case "", "table":
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return fmt.Errorf("-o: want table, json or yaml, got %q", format)
}

func newZtunnelConfigCmd() *cobra.Command {
	var stateDir, node, output string
	cmd := &cobra.Command{
		Use:       "ztunnel-config workloads|services|policies|certificates|pods",
		Short:     "Show what a node's ztunnel knows (local mode), like istioctl ztunnel-config",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"workloads", "services", "policies", "certificates", "pods"},
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := configDump(stateDir, node)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch args[0] {
			case "workloads":
				return printAs(out, output, d.Workloads, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAMESPACE\tPOD NAME\tADDRESS\tNODE\tWAYPOINT\tPROTOCOL\tIDENTITY")
					for _, w := range d.Workloads {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", w.Namespace, w.Name, strings.Join(w.Addresses, ","), w.Node, orNone(w.Waypoint), w.TunnelProtocol, w.Identity)
					}
				})
			case "services":
				return printAs(out, output, d.Services, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAMESPACE\tSERVICE NAME\tSERVICE VIP\tWAYPOINT\tPORTS")
					for _, s := range d.Services {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, strings.Join(s.VIPs, ","), orNone(s.Waypoint), strings.Join(s.Ports, " "))
					}
				})
			case "certificates":
				return printAs(out, output, d.Certificates, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "CERTIFICATE NAME\tSTATE\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE")
					for _, c := range d.Certificates {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Identity, c.State, c.Serial, c.NotAfter.Format(time.RFC3339), c.NotBefore.Format(time.RFC3339))
					}
				})
			case "pods":
				return printAs(out, output, d.Pods, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAMESPACE\tPOD\tIDENTITY")
					for _, p := range d.Pods {
						fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Namespace, p.Name, p.Identity)
					}
				})
			case "policies":
				ps, err := decodePolicies(d)
				if err != nil {
					return err
				}
				return printAs(out, output, d.Policies, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAMESPACE\tPOLICY NAME\tACTION\tSCOPE\tRULES\tDRY RUN")
					for _, p := range ps {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%v\n", p.GetNamespace(), p.GetName(), p.GetAction(), p.GetScope(), len(p.GetGroups()), p.GetDryRun())
					}
				})
			}
			return fmt.Errorf("unknown view %q: want workloads, services, policies, certificates or pods", args[0])
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", local.DefaultStateDir, "the local mesh's state directory")
	cmd.Flags().StringVar(&node, "node", "node1", "node whose ztunnel to ask")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

func decodePolicies(d *ztunnel.ConfigDump) ([]*security.Authorization, error) {
	var out []*security.Authorization
	for i, raw := range d.Policies {
		p := &security.Authorization{}
		if err := protojson.Unmarshal(raw, p); err != nil {
			return nil, fmt.Errorf("policy %d of the config dump: %w", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func newAuthzCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "authz", Short: "Explain authorization decisions, at L4 (ztunnel) and L7 (waypoint)"}
	var stateDir, from, to, method, path string
	check := &cobra.Command{
		Use:   "check --from NS/POD --to NS/POD-or-SERVICE:PORT [--method M --path P]",
		Short: "Say whether a request would be allowed, which layer (waypoint or ztunnel) and which policy decided, with the code the proxies run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			src, err := st.FindPod(from)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			toName, portStr, ok := strings.Cut(to, ":")
			if !ok {
				return errors.New("--to: want NS/POD:PORT or NS/SERVICE:PORT")
			}
			port, err := strconv.ParseUint(portStr, 10, 16)
			if err != nil || port == 0 {
				return fmt.Errorf("--to: bad port %q", portStr)
			}
			// The source's ztunnel routes: it knows every workload and
			// service, and which waypoint each uses.
			d, err := configDump(stateDir, src.Node)
			if err != nil {
				return err
			}
			srcW := findWorkload(d, src.Namespace, src.Name)
			var srcID *identity.SPIFFE
			if srcW != nil && srcW.TunnelProtocol == workloadapi.TunnelProtocol_HBONE.String() {
				id, err := identity.ParseSPIFFE(srcW.Identity)
				if err != nil {
					return err
				}
				srcID = &id
			}
			var target netip.AddrPort
			var wpRef string
			var endpoints []*ztunnel.WorkloadDump
			if dst, err := st.FindPod(toName); err == nil {
				dstW := findWorkload(d, dst.Namespace, dst.Name)
				if dstW == nil {
					return fmt.Errorf("ztunnel on %s does not know %s/%s", src.Node, dst.Namespace, dst.Name)
				}
				target = netip.AddrPortFrom(netip.MustParseAddr(orZero(dst.IP)), uint16(port))
				wpRef, endpoints = dstW.Waypoint, []*ztunnel.WorkloadDump{dstW}
			} else {
				ns, name, _ := strings.Cut(toName, "/")
				var svc *ztunnel.ServiceDump
				for i := range d.Services {
					if d.Services[i].Namespace == ns && d.Services[i].Name == name {
						svc = &d.Services[i]
					}
				}
				if svc == nil || len(svc.VIPs) == 0 {
					return fmt.Errorf("--to: %s is neither a pod nor a service with a VIP", toName)
				}
				target = netip.AddrPortFrom(netip.MustParseAddr(svc.VIPs[0]), uint16(port))
				wpRef = svc.Waypoint
				for i := range d.Workloads {
					if slices.Contains(d.Workloads[i].Services, svc.Namespace+"/"+svc.Hostname) {
						endpoints = append(endpoints, &d.Workloads[i])
					}
				}
			}
			how := "plaintext (the source is not in the mesh)"
			if srcID != nil {
				how = "mTLS as " + srcID.String()
			}
			fmt.Fprintf(out, "%s/%s -> %s (%s), %s\n", src.Namespace, src.Name, to, target, how)
			l4From := srcID
			if wpRef != "" && srcID != nil {
				wpNS, host, _ := strings.Cut(wpRef, "/")
				wpName, _, _ := strings.Cut(host, ".")
				q := url.Values{"target": {target.String()}, "principal": {srcID.URL().String()}, "source": {src.IP}, "method": {orDefault(method, "GET")}, "path": {orDefault(path, "/")}}
				body, err := local.WaypointGet(stateDir, wpNS, wpName, "/debug/authz?"+q.Encode())
				if err != nil {
					return fmt.Errorf("asking waypoint %s/%s: %w", wpNS, wpName, err)
				}
				var ex waypoint.Explanation
				if err := json.Unmarshal(body, &ex); err != nil {
					return fmt.Errorf("waypoint answer: %w: %s", err, body)
				}
				verdict := "DENY"
				if ex.Bound && ex.Decision.Allowed {
					verdict = "ALLOW"
				}
				fmt.Fprintf(out, "  layer 1, waypoint %s/%s (L7, %s %s): %s\n", wpNS, wpName, orDefault(method, "GET"), orDefault(path, "/"), verdict)
				if !ex.Bound {
					fmt.Fprintf(out, "    refused: %s\n", ex.Refusal)
					fmt.Fprintf(out, "DENY (decided by the waypoint)\n")
					return nil
				}
				fmt.Fprintf(out, "    reason: %s\n", ex.Decision.Reason)
				if ex.Decision.Policy != "" {
					fmt.Fprintf(out, "    decided by: %s\n", ex.Decision.Policy)
				}
				fmt.Fprintf(out, "    policy targets: %s\n", strings.Join(ex.Targets, ", "))
				if ex.Route != "" {
					fmt.Fprintf(out, "    route: %s -> %s\n", ex.Route, orDefault(ex.Cluster, "-"))
				}
				if !ex.Decision.Allowed {
					fmt.Fprintf(out, "DENY (decided by the waypoint)\n")
					return nil
				}
				wpID := identity.SPIFFE{TrustDomain: identity.DefaultTrustDomain, Namespace: wpNS, ServiceAccount: wpName}
				l4From = &wpID
				fmt.Fprintf(out, "  layer 2, destination ztunnel (L4), from the waypoint as %s:\n", wpID)
			} else {
				if method != "" || path != "" {
					fmt.Fprintf(out, "  no waypoint: ztunnel decides at L4; HTTP fields of policies never match there (upstream's rule), so --method and --path change nothing\n")
				}
				fmt.Fprintf(out, "  destination ztunnel (L4):\n")
			}
			allowed := 0
			for _, ep := range endpoints {
				verdict, lines, err := l4Check(stateDir, ep, l4From, netip.MustParseAddr(orZero(src.IP)), uint16(port), target)
				if err != nil {
					return err
				}
				if verdict == "ALLOW" {
					allowed++
				}
				fmt.Fprintf(out, "    %s/%s: %s\n", ep.Namespace, ep.Name, verdict)
				for _, l := range lines {
					fmt.Fprintf(out, "      %s\n", l)
				}
			}
			switch {
			case len(endpoints) == 0:
				fmt.Fprintf(out, "DENY (no endpoint)\n")
			case allowed == len(endpoints):
				fmt.Fprintf(out, "ALLOW\n")
			case allowed == 0:
				fmt.Fprintf(out, "DENY (decided by the destination ztunnel)\n")
			default:
				fmt.Fprintf(out, "ALLOW on %d of %d endpoints (decided by the destination ztunnel)\n", allowed, len(endpoints))
			}
			return nil
		},
	}
	check.Flags().StringVar(&stateDir, "state-dir", local.DefaultStateDir, "the local mesh's state directory")
	check.Flags().StringVar(&from, "from", "", "source pod, NS/POD")
	check.Flags().StringVar(&to, "to", "", "destination pod or service and port, NS/NAME:PORT")
	check.Flags().StringVar(&method, "method", "", "HTTP method (evaluated by the waypoint, if the destination has one)")
	check.Flags().StringVar(&path, "path", "", "HTTP path (evaluated by the waypoint, if the destination has one)")
	_ = check.MarkFlagRequired("from")
	_ = check.MarkFlagRequired("to")
	cmd.AddCommand(check)
	return cmd
}

func findWorkload(d *ztunnel.ConfigDump, ns, name string) *ztunnel.WorkloadDump {
	for i := range d.Workloads {
		if d.Workloads[i].Namespace == ns && d.Workloads[i].Name == name {
			return &d.Workloads[i]
		}
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// l4Check evaluates, with the destination ztunnel's own policies, a
// connection to endpoint ep from identity from (nil: plaintext).
func l4Check(stateDir string, ep *ztunnel.WorkloadDump, from *identity.SPIFFE, srcIP netip.Addr, port uint16, target netip.AddrPort) (string, []string, error) {
	if ep.TunnelProtocol != workloadapi.TunnelProtocol_HBONE.String() {
		return "ALLOW", []string{"not in the mesh: ztunnel enforces nothing for it"}, nil
	}
	d, err := configDump(stateDir, ep.Node)
	if err != nil {
		return "", nil, err
	}
	policies, err := decodePolicies(d)
	if err != nil {
		return "", nil, err
	}
	if w := findWorkload(d, ep.Namespace, ep.Name); w != nil {
		ep = w
	}
	ip := netip.MustParseAddr(orZero(firstOf(ep.Addresses)))
	conn := authz.Conn{Src: from, SrcIP: srcIP, DstIP: ip, DstPort: port}
	if target.Addr() == ip {
		conn.DstPort = target.Port()
	}
	w := &workloadapi.Workload{Namespace: ep.Namespace, Name: ep.Name, AuthorizationPolicies: ep.Policies}
	applied := authz.Select(policies, w)
	dec := authz.Evaluate(applied, conn)
	verdict := "DENY"
	if dec.Allow {
		verdict = "ALLOW"
	}
	lines := []string{"reason: " + dec.Reason}
	if dec.Policy != "" {
		lines = append(lines, "decided by: "+dec.Policy)
	}
	var names []string
	for _, p := range applied {
		names = append(names, fmt.Sprintf("%s/%s (%s)", p.GetNamespace(), p.GetName(), p.GetAction()))
	}
	lines = append(lines, "policies that apply: "+orNone(strings.Join(names, ", ")))
	for _, dr := range dec.DryRun {
		lines = append(lines, "dry run would deny: "+dr)
	}
	return verdict, lines, nil
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func orZero(ip string) string {
	if ip == "" {
		return "0.0.0.0"
	}
	return ip
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
