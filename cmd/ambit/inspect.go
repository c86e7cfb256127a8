package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
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
					fmt.Fprintln(tw, "NAMESPACE\tPOD NAME\tADDRESS\tNODE\tPROTOCOL\tIDENTITY")
					for _, w := range d.Workloads {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", w.Namespace, w.Name, strings.Join(w.Addresses, ","), w.Node, w.TunnelProtocol, w.Identity)
					}
				})
			case "services":
				return printAs(out, output, d.Services, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAMESPACE\tSERVICE NAME\tSERVICE VIP\tPORTS")
					for _, s := range d.Services {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Namespace, s.Name, strings.Join(s.VIPs, ","), strings.Join(s.Ports, " "))
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
	cmd := &cobra.Command{Use: "authz", Short: "Explain L4 authorization decisions"}
	var stateDir, from, to string
	check := &cobra.Command{
		Use:   "check --from NS/POD --to NS/POD:PORT",
		Short: "Say whether a connection would be allowed, and which policy and rule decided, with the code ztunnel runs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			src, err := st.FindPod(from)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			toPod, portStr, ok := strings.Cut(to, ":")
			if !ok {
				return errors.New("--to: want NS/POD:PORT")
			}
			port, err := strconv.ParseUint(portStr, 10, 16)
			if err != nil || port == 0 {
				return fmt.Errorf("--to: bad port %q", portStr)
			}
			dst, err := st.FindPod(toPod)
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			// The destination's ztunnel decides, with what it holds.
			d, err := configDump(stateDir, dst.Node)
			if err != nil {
				return err
			}
			policies, err := decodePolicies(d)
			if err != nil {
				return err
			}
			var srcW, dstW *ztunnel.WorkloadDump
			for i := range d.Workloads {
				w := &d.Workloads[i]
				if w.Namespace == src.Namespace && w.Name == src.Name {
					srcW = w
				}
				if w.Namespace == dst.Namespace && w.Name == dst.Name {
					dstW = w
				}
			}
			if dstW == nil {
				return fmt.Errorf("ztunnel on %s does not know %s/%s", dst.Node, dst.Namespace, dst.Name)
			}
			if dstW.TunnelProtocol != workloadapi.TunnelProtocol_HBONE.String() {
				fmt.Fprintf(cmd.OutOrStdout(), "ALLOW: %s/%s is not in the mesh, so ztunnel enforces nothing for it\n", dst.Namespace, dst.Name)
				return nil
			}
			conn := authz.Conn{SrcIP: netip.MustParseAddr(orZero(src.IP)), DstIP: netip.MustParseAddr(orZero(dst.IP)), DstPort: uint16(port)}
			how := "plaintext (the source is not in the mesh)"
			if srcW != nil && srcW.TunnelProtocol == workloadapi.TunnelProtocol_HBONE.String() {
				id, err := identity.ParseSPIFFE(srcW.Identity)
				if err != nil {
					return err
				}
				conn.Src, how = &id, "mTLS as "+id.String()
			}
			w := &workloadapi.Workload{Namespace: dst.Namespace, Name: dst.Name, AuthorizationPolicies: dstW.Policies}
			applied := authz.Select(policies, w)
			dec := authz.Evaluate(applied, conn)
			verdict := "DENY"
			if dec.Allow {
				verdict = "ALLOW"
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: %s/%s -> %s/%s:%d, %s\n", verdict, src.Namespace, src.Name, dst.Namespace, dst.Name, port, how)
			fmt.Fprintf(out, "  reason: %s\n", dec.Reason)
			if dec.Policy != "" {
				fmt.Fprintf(out, "  decided by: %s\n", dec.Policy)
			}
			var names []string
			for _, p := range applied {
				names = append(names, fmt.Sprintf("%s/%s (%s)", p.GetNamespace(), p.GetName(), p.GetAction()))
			}
			fmt.Fprintf(out, "  policies that apply: %s\n", orNone(strings.Join(names, ", ")))
			for _, dr := range dec.DryRun {
				fmt.Fprintf(out, "  dry run would deny: %s\n", dr)
			}
			return nil
		},
	}
	check.Flags().StringVar(&stateDir, "state-dir", local.DefaultStateDir, "the local mesh's state directory")
	check.Flags().StringVar(&from, "from", "", "source pod, NS/POD")
	check.Flags().StringVar(&to, "to", "", "destination pod and port, NS/POD:PORT")
	_ = check.MarkFlagRequired("from")
	_ = check.MarkFlagRequired("to")
	cmd.AddCommand(check)
	return cmd
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
