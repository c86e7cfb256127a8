package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/internal/dnsname"
	"github.com/ambit-mesh/ambit/local"
)

// newWaypointCmd is `ambit waypoint`: run (the proxy) and, as istioctl
// waypoint does on a cluster, apply, list, status and delete waypoints of
// the local mesh (as Gateway files in its config directory, which the
// mesh follows).
func newWaypointCmd(run *cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: "waypoint", Short: "Run the waypoint proxy, or manage the local mesh's waypoints (as istioctl waypoint)"}
	var stateDir, ns, name, forWhat, output string
	var enroll, wait bool
	var timeout time.Duration
	addCommon := func(c *cobra.Command) {
		c.Flags().StringVar(&stateDir, "state-dir", local.DefaultStateDir, "the local mesh's state directory")
		c.Flags().StringVarP(&ns, "namespace", "n", "", "namespace of the waypoint")
		c.Flags().StringVar(&name, "name", "waypoint", "name of the waypoint Gateway")
	}
	apply := &cobra.Command{
		Use:   "apply -n NS [--name NAME] [--for service|workload|all|none] [--enroll-namespace]",
		Short: "Create or update a waypoint Gateway and wait until it is programmed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkNames(ns, name); err != nil {
				return err
			}
			switch forWhat {
			case model.WaypointForService, model.WaypointForWorkload, model.WaypointForAll, model.WaypointForNone:
			default:
				return fmt.Errorf("--for %q: want service, workload, all or none", forWhat)
			}
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			if _, err := findNamespace(st.ConfigDir, ns); err != nil {
				return err // as an API server refuses objects in a namespace that does not exist
			}
			path := waypointFile(st.ConfigDir, ns, name)
			if err := writeFileAtomic(path, waypointGateway(ns, name, forWhat)); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "waypoint %s/%s applied (%s)\n", ns, name, path)
			if enroll {
				file, err := labelNamespace(st.ConfigDir, ns, model.LabelUseWaypoint, name)
				if err != nil {
					return fmt.Errorf("--enroll-namespace: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "namespace %s labeled %s=%s (%s)\n", ns, model.LabelUseWaypoint, name, file)
			}
			if !wait {
				return nil
			}
			deadline := time.Now().Add(timeout)
			for {
				st, err := local.ReadState(stateDir)
				if err != nil {
					return err
				}
				if w := findWaypoint(st, ns, name); w != nil && w.Programmed {
					fmt.Fprintf(cmd.OutOrStdout(), "waypoint %s/%s programmed at %s\n", ns, name, strings.Join(w.Addresses, ","))
					return nil
				} else if time.Now().After(deadline) {
					reason := "not reported by the control plane yet"
					if w != nil {
						reason = w.Reason
					}
					return fmt.Errorf("waypoint %s/%s not programmed after %v: %s", ns, name, timeout, reason)
				}
				time.Sleep(250 * time.Millisecond)
			}
		},
	}
	addCommon(apply)
	apply.Flags().StringVar(&forWhat, "for", model.WaypointForService, "traffic the waypoint takes: service, workload, all or none")
	apply.Flags().BoolVar(&enroll, "enroll-namespace", false, "label the namespace "+model.LabelUseWaypoint+"=NAME, so its services use the waypoint")
	apply.Flags().BoolVar(&wait, "wait", true, "wait until the waypoint is programmed")
	apply.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long --wait waits")

	list := &cobra.Command{
		Use:   "list [-n NS]",
		Short: "List the waypoints and what uses them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			var rows []model.WaypointStatus
			for _, w := range st.Waypoints {
				if ns == "" || w.Namespace == ns {
					rows = append(rows, w)
				}
			}
			return printAs(cmd.OutOrStdout(), output, rows, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAMESPACE\tNAME\tFOR\tPROGRAMMED\tADDRESSES\tSERVICES\tWORKLOADS")
				for _, w := range rows {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\n", w.Namespace, w.Name, w.For, w.Programmed,
						orDash(strings.Join(w.Addresses, ",")), orDash(strings.Join(w.Services, ",")), orDash(strings.Join(w.Workloads, ",")))
				}
			})
		},
	}
	list.Flags().StringVar(&stateDir, "state-dir", local.DefaultStateDir, "the local mesh's state directory")
	list.Flags().StringVarP(&ns, "namespace", "n", "", "only this namespace")
	list.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")

	status := &cobra.Command{
		Use:   "status -n NS [--name NAME]",
		Short: "Show a waypoint's conditions, and the labels that name it without effect",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkNames(ns, name); err != nil {
				return err
			}
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			w := findWaypoint(st, ns, name)
			if w == nil {
				return fmt.Errorf("no waypoint %s/%s (ambit waypoint list shows the waypoints)", ns, name)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "waypoint %s/%s (for %s)\n  Accepted:   %v\n  Programmed: %v\n", w.Namespace, w.Name, w.For, w.Accepted, w.Programmed)
			if w.Reason != "" {
				fmt.Fprintf(out, "  Reason:     %s\n", w.Reason)
			}
			fmt.Fprintf(out, "  Addresses:  %s\n  Services:   %s\n  Workloads:  %s\n", orDash(strings.Join(w.Addresses, ", ")),
				orDash(strings.Join(w.Services, ", ")), orDash(strings.Join(w.Workloads, ", ")))
			for _, b := range st.BindingProblems {
				if strings.Contains(b.Problem, " "+ns+"/"+name+" ") {
					fmt.Fprintf(out, "  not in effect: %s (label from %s): %s\n", b.Object, b.From, b.Problem)
				}
			}
			return nil
		},
	}
	addCommon(status)

	del := &cobra.Command{
		Use:   "delete -n NS [--name NAME]",
		Short: "Delete a waypoint that ambit waypoint apply created",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkNames(ns, name); err != nil {
				return err
			}
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			path := waypointFile(st.ConfigDir, ns, name)
			if err := os.Remove(path); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("waypoint %s/%s was not created by ambit waypoint apply (no %s); delete its Gateway from your manifests", ns, name, path)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "waypoint %s/%s deleted (%s); labels naming it stop taking effect\n", ns, name, path)
			return nil
		},
	}
	addCommon(del)
	cmd.AddCommand(run, apply, list, status, del)
	return cmd
}

func checkNames(ns, name string) error {
	if ns == "" {
		return errors.New("-n/--namespace is required")
	}
	if err := dnsname.Label(ns); err != nil {
		return fmt.Errorf("namespace %q: %w", ns, err)
	}
	if err := dnsname.Label(name); err != nil {
		return fmt.Errorf("name %q: %w", name, err)
	}
	return nil
}

func findWaypoint(st *local.State, ns, name string) *model.WaypointStatus {
	for i := range st.Waypoints {
		if st.Waypoints[i].Namespace == ns && st.Waypoints[i].Name == name {
			return &st.Waypoints[i]
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// waypointFile is where apply keeps a waypoint's Gateway.
func waypointFile(configDir, ns, name string) string {
	return filepath.Join(configDir, "waypoint-"+ns+"-"+name+".yaml")
}

// waypointGateway is the Gateway istioctl waypoint generates.
func waypointGateway(ns, name, forWhat string) []byte {
	labels := ""
	if forWhat != model.WaypointForService {
		labels = "\n  labels:\n    " + model.LabelWaypointFor + ": " + forWhat
	}
	return []byte(fmt.Sprintf(`# Written by ambit waypoint apply; ambit waypoint delete removes it.
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %s
  namespace: %s%s
spec:
  gatewayClassName: %s
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`, name, ns, labels, model.GatewayClassWaypoint))
}

// writeFileAtomic writes data to path by renaming a temporary file, so the
// config watcher never reads half a file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ambit-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// labelNamespace sets a label on the Namespace ns in whichever file of
// configDir defines it, editing only that document (comments and the
// other documents are kept).
func labelNamespace(configDir, ns, key, value string) (string, error) {
	f, err := findNamespace(configDir, ns)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return "", err
	}
	out, _, err := setNamespaceLabel(data, ns, key, value)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f, err)
	}
	return f, writeFileAtomic(f, out)
}

// findNamespace returns the file of configDir that defines Namespace ns.
func findNamespace(configDir, ns string) (string, error) {
	files, err := filepath.Glob(filepath.Join(configDir, "*.yaml"))
	if err != nil {
		return "", err
	}
	more, _ := filepath.Glob(filepath.Join(configDir, "*.yml"))
	for _, f := range append(files, more...) {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		if _, found, err := setNamespaceLabel(data, ns, "", ""); err == nil && found {
			return f, nil
		}
	}
	return "", fmt.Errorf("no Namespace %s in %s: add its manifest first (local mode creates namespaces from manifests)", ns, configDir)
}

// setNamespaceLabel edits the YAML stream data: the Namespace document
// named ns gets metadata.labels[key] = value.
func setNamespaceLabel(data []byte, ns, key, value string) ([]byte, bool, error) {
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var docs []*yaml.Node
	found := false
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, false, err
		}
		if isNamespace(&doc, ns) {
			setLabel(&doc, key, value)
			found = true
		}
		docs = append(docs, &doc)
	}
	if !found {
		return nil, false, nil
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	for _, d := range docs {
		if err := enc.Encode(d); err != nil {
			return nil, false, err
		}
	}
	if err := enc.Close(); err != nil {
		return nil, false, err
	}
	return []byte(b.String()), true, nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func isNamespace(doc *yaml.Node, ns string) bool {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return false
	}
	root := doc.Content[0]
	kind, meta := mapValue(root, "kind"), mapValue(root, "metadata")
	name := mapValue(meta, "name")
	return kind != nil && kind.Value == "Namespace" && name != nil && name.Value == ns
}

func setLabel(doc *yaml.Node, key, value string) {
	meta := mapValue(doc.Content[0], "metadata")
	labels := mapValue(meta, "labels")
	if labels == nil {
		labels = &yaml.Node{Kind: yaml.MappingNode}
		meta.Content = append(meta.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "labels"}, labels)
	}
	labels.Style = 0 // block style once edited
	if v := mapValue(labels, key); v != nil {
		v.Value = value
		return
	}
	labels.Content = append(labels.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, &yaml.Node{Kind: yaml.ScalarNode, Value: value})
}
