package local

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/nsnet"
	"golang.org/x/sys/unix"
)

// RequireRoot fails unless the process runs as root.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("local mode needs root: it creates network namespaces, links and routes (run with sudo)")
	}
	return nil
}

// UpOptions configures Up.
type UpOptions struct {
	ConfigDir string
	StateDir  string
	Nodes     int // 0: from a LocalCluster in ConfigDir, else 2
	// ZtunnelWorkers is each ztunnel's --workers (0: ztunnel's default).
	ZtunnelWorkers int
	Timeout        time.Duration // for every pod to be running
	Out            io.Writer
}

// Up validates the config, cleans leftovers of an earlier run, starts the
// supervisor in the background and waits until every pod runs.
func Up(ctx context.Context, o UpOptions) error {
	if err := RequireRoot(); err != nil {
		return err
	}
	dir, err := filepath.Abs(o.ConfigDir)
	if err != nil {
		return err
	}
	// The supervisor runs in "/": it gets absolute paths.
	if o.StateDir, err = filepath.Abs(o.StateDir); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("config directory %s: not a readable directory", o.ConfigDir)
	}
	snap, err := filesource.LoadDir(dir)
	if err != nil {
		var lines []string
		for _, e := range filesource.Errors(err) {
			lines = append(lines, "  "+e.Error())
		}
		if len(lines) == 0 {
			lines = append(lines, "  "+err.Error())
		}
		return fmt.Errorf("config %s is invalid; nothing was started:\n%s", o.ConfigDir, strings.Join(lines, "\n"))
	}
	nodes := o.Nodes
	if nodes == 0 {
		nodes = 2
		if lc, ok := snap.LocalCluster(); ok && lc.Spec.Nodes > 0 {
			nodes = lc.Spec.Nodes
		}
	}
	plan, err := planNodes(nodes)
	if err != nil {
		return err
	}
	var perNode = map[string]int{}
	for _, pod := range snap.Pods() {
		if _, err := placePod(pod, plan, perNode); err != nil {
			return fmt.Errorf("config %s: %w", o.ConfigDir, err)
		}
	}
	self, binDir, err := selfBinDir()
	if err != nil {
		return err
	}
	if err := checkPlugins(binDir); err != nil {
		return err
	}
	if err := foreignMesh(LockPath, o.StateDir); err != nil {
		return err
	}
	if left := leftovers(o.StateDir); len(left) > 0 {
		fmt.Fprintf(o.Out, "cleaning up a previous run that did not shut down: %s\n", strings.Join(left, ", "))
		if err := Down(ctx, o.StateDir, io.Discard); err != nil {
			return fmt.Errorf("cleaning up the previous run: %w", err)
		}
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	logf, err := os.OpenFile(Paths{o.StateDir}.SupervisorLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("supervisor log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(self, "local", "run", "-f", dir, "--nodes", strconv.Itoa(nodes), "--state-dir", o.StateDir,
		"--ztunnel-workers", strconv.Itoa(o.ZtunnelWorkers))
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the supervisor: %w", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	timeout := o.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("the supervisor (pid %d) exited during start-up; its log %s ends with:\n%s", pid, Paths{o.StateDir}.SupervisorLog(), tail(Paths{o.StateDir}.SupervisorLog(), 15))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		st, err := ReadState(o.StateDir)
		if err != nil {
			continue
		}
		if st.Error != "" {
			_ = Down(ctx, o.StateDir, io.Discard)
			return fmt.Errorf("local mesh failed to start: %s", st.Error)
		}
		pending, failed := podProgress(st)
		if len(failed) > 0 {
			_ = Down(ctx, o.StateDir, io.Discard)
			return fmt.Errorf("pods failed to start, mesh torn down:\n  %s", strings.Join(failed, "\n  "))
		}
		if st.Ready && len(pending) == 0 {
			fmt.Fprintf(o.Out, "local mesh up: %d nodes, %d pods, %d services (supervisor pid %d, state in %s)\n", len(st.Nodes), len(st.Pods), len(st.Services), st.Supervisor, o.StateDir)
			return nil
		}
		if time.Now().After(deadline) {
			_ = Down(ctx, o.StateDir, io.Discard)
			return fmt.Errorf("timed out after %s waiting for pods %s; mesh torn down", timeout, strings.Join(pending, ", "))
		}
	}
}

func podProgress(st *State) (pending, failed []string) {
	for _, p := range st.Pods {
		name := p.Namespace + "/" + p.Name
		switch p.Phase {
		case "Running", "Succeeded":
		case "Failed":
			failed = append(failed, name+": "+p.Message)
		default:
			pending = append(pending, name)
		}
	}
	return pending, failed
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// leftovers lists what a previous run left behind.
func leftovers(stateDir string) []string {
	var out []string
	if pid, ok := supervisorPID(stateDir); ok {
		out = append(out, fmt.Sprintf("supervisor pid %d", pid))
	}
	if names, _ := ourNetns(); len(names) > 0 {
		out = append(out, fmt.Sprintf("%d network namespaces", len(names)))
	}
	if _, err := os.Stat(stateDir); err == nil {
		out = append(out, "state directory "+stateDir)
	}
	return out
}

// supervisorPID returns the PID in the pid file if that process is still
// our supervisor: the same start time (field 22 of /proc/PID/stat, recorded
// next to the PID) and an `ambit local run` command line, so a recycled PID
// is never signalled.
func supervisorPID(stateDir string) (int, bool) {
	data, err := os.ReadFile(Paths{stateDir}.PIDFile())
	if err != nil {
		return 0, false
	}
	pid, start, err := parsePIDFile(data)
	if err != nil {
		return 0, false
	}
	if now, err := procStartTime(pid); err != nil || now != start {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("local\x00run\x00")) {
		return 0, false
	}
	return pid, true
}

// pidFileContent is what the supervisor writes in its pid file: its PID
// and its start time, so that others can tell it from a later process
// that got the same PID.
func pidFileContent(pid int, start uint64) []byte {
	return fmt.Appendf(nil, "%d %d\n", pid, start)
}

// parsePIDFile reads "PID STARTTIME".
func parsePIDFile(data []byte) (pid int, start uint64, err error) {
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("pid file: want \"PID STARTTIME\", got %q", data)
	}
	pid, err = strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0, 0, fmt.Errorf("pid file: bad PID %q", f[0])
	}
	start, err = strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("pid file: bad start time %q", f[1])
	}
	return pid, start, nil
}

// procStartTime returns the start time of a process, in clock ticks after
// boot (field 22 of /proc/PID/stat).
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatStartTime(data)
}

// parseStatStartTime extracts the start time from the text of
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command name")
	}
	// After ")": field 3 (state) onwards; start time is field 22.
	f := strings.Fields(string(stat[i+1:]))
	const startField = 22 - 3
	if len(f) <= startField {
		return 0, fmt.Errorf("/proc stat: %d fields after the command name, want more than %d", len(f), startField)
	}
	v, err := strconv.ParseUint(f[startField], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc stat: start time %q: %w", f[startField], err)
	}
	return v, nil
}

// Down stops the supervisor and removes everything a local mesh created:
// processes in its namespaces, the namespaces (with every link and route in
// them) and the state directory. It is safe to run at any time.
func Down(ctx context.Context, stateDir string, out io.Writer) error {
	if err := RequireRoot(); err != nil {
		return err
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := foreignMesh(LockPath, stateDir); err != nil {
		return err
	}
	if pid, ok := supervisorPID(stateDir); ok {
		fmt.Fprintf(out, "stopping supervisor (pid %d)\n", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(30 * time.Second)
		for processAlive(pid) && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		if processAlive(pid) {
			fmt.Fprintf(out, "supervisor did not stop in time; killing it\n")
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	logger := slog.New(slog.NewTextHandler(out, nil))
	if err := removeNamespaces(logger); err != nil {
		return err
	}
	if err := os.RemoveAll(stateDir); err != nil {
		return fmt.Errorf("removing state directory: %w", err)
	}
	if stateDir == DefaultStateDir {
		_ = os.Remove(filepath.Dir(stateDir)) // /run/ambit, if up made it and nothing else is in it
	}
	fmt.Fprintln(out, "local mesh down")
	return nil
}

func processAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie is not alive.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(data, ')'); i > 0 && i+2 < len(data) {
		return data[i+2] != 'Z'
	}
	return true
}

// removeNamespaces kills every process inside a namespace we created, then
// deletes those namespaces: pods first, then nodes, then the underlay.
func removeNamespaces(logger *slog.Logger) error {
	names, err := ourNetns()
	if err != nil {
		return fmt.Errorf("listing network namespaces: %w", err)
	}
	inodes := map[uint64]bool{}
	for _, n := range names {
		if ino, err := netnsInode(netnsPath(n)); err == nil {
			inodes[ino] = true
		}
	}
	for attempt := 0; attempt < 50; attempt++ {
		pids := processesIn(inodes)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if attempt == 0 {
				logger.Info("killing leftover process", "pid", pid)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rank := func(n string) int {
		switch {
		case strings.HasPrefix(n, NamePrefix+"pod-"):
			return 0
		case n == underlayNetns:
			return 2
		}
		return 1
	}
	sort.Slice(names, func(i, j int) bool {
		return rank(names[i]) < rank(names[j]) || (rank(names[i]) == rank(names[j]) && names[i] < names[j])
	})
	var errs []error
	for _, n := range names {
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// statusJSON is what `ambit local status -o json` prints: everything the
// text view shows, with the values scripts need beside the words the text
// uses. The pods' environments stay out (`ambit local exec` applies them).
type statusJSON struct {
	Ready           bool                     `json:"ready"`
	Error           string                   `json:"error,omitempty"`
	Supervisor      int                      `json:"supervisorPID"`
	ConfigDir       string                   `json:"configDir"`
	Nodes           []NodeStatus             `json:"nodes"`
	Pods            []podJSON                `json:"pods"`
	Services        []ServiceStatus          `json:"services"`
	PolicyWarnings  []string                 `json:"policyWarnings"`
	ConfigErrors    []ConfigError            `json:"configErrors"`
	Waypoints       []model.WaypointStatus   `json:"waypoints"`
	BindingProblems []model.BindingProblem   `json:"bindingProblems"`
	Routes          []controller.RouteStatus `json:"routes"`
}

// podJSON is one pod in statusJSON.
type podJSON struct {
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	UID            string `json:"uid"`
	Node           string `json:"node"`
	IP             string `json:"ip"`
	Netns          string `json:"netns"`
	ServiceAccount string `json:"serviceAccount"`
	Phase          string `json:"phase"`
	// Mesh is the MESH column of the text view; Redirection is the
	// value it is made from ("enabled", "pending" or "").
	Mesh        string `json:"mesh"`
	Redirection string `json:"redirection"`
	Restarts    int    `json:"restarts"`
	Message     string `json:"message"`
	PID         int    `json:"pid,omitempty"`
	Log         string `json:"log"`
}

// newStatusJSON builds the JSON view of st. Lists are never null.
func newStatusJSON(st *State) statusJSON {
	v := statusJSON{
		Ready: st.Ready, Error: st.Error, Supervisor: st.Supervisor, ConfigDir: st.ConfigDir,
		Nodes: st.Nodes, Pods: []podJSON{}, Services: st.Services,
		PolicyWarnings: st.PolicyWarnings, ConfigErrors: st.ConfigErrors,
		Waypoints: st.Waypoints, BindingProblems: st.BindingProblems, Routes: st.Routes,
	}
	if v.Waypoints == nil {
		v.Waypoints = []model.WaypointStatus{}
	}
	if v.BindingProblems == nil {
		v.BindingProblems = []model.BindingProblem{}
	}
	if v.Routes == nil {
		v.Routes = []controller.RouteStatus{}
	}
	if v.Nodes == nil {
		v.Nodes = []NodeStatus{}
	}
	if v.Services == nil {
		v.Services = []ServiceStatus{}
	}
	if v.PolicyWarnings == nil {
		v.PolicyWarnings = []string{}
	}
	if v.ConfigErrors == nil {
		v.ConfigErrors = []ConfigError{}
	}
	for _, p := range st.Pods {
		v.Pods = append(v.Pods, podJSON{
			Namespace: p.Namespace, Name: p.Name, UID: p.UID, Node: p.Node, IP: p.IP, Netns: p.Netns,
			ServiceAccount: p.ServiceAccount, Phase: p.Phase, Mesh: meshState(p.Redirection), Redirection: p.Redirection,
			Restarts: p.Restarts, Message: p.Message, PID: p.PID, Log: p.Log,
		})
	}
	return v
}

// meshState is how the status shows a pod's redirection.
func meshState(redirection string) string {
	switch redirection {
	case "enabled":
		return "ambient (HBONE)"
	case "pending":
		return "ambient (waiting for ztunnel)"
	case "":
		return "-"
	}
	return redirection
}

// PrintStatus writes the state as tables, or as JSON.
func PrintStatus(out io.Writer, st *State, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(newStatusJSON(st))
	}
	mesh := "ready"
	switch {
	case st.Error != "":
		mesh = "FAILED: " + st.Error
	case !st.Ready:
		mesh = "starting"
	}
	header := fmt.Sprintf("LOCAL MESH: %s; supervisor pid %d; config %s", mesh, st.Supervisor, st.ConfigDir)
	switch n := len(rejectedFiles(st.ConfigErrors)); n {
	case 0:
	case 1:
		header += "; 1 file rejected (see CONFIG ERRORS below)"
	default:
		header += fmt.Sprintf("; %d files rejected (see CONFIG ERRORS below)", n)
	}
	fmt.Fprintf(out, "%s\n\n", header)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPOD CIDR\tUNDERLAY IP\tNETNS")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.PodCIDR, n.UnderlayIP, n.Netns)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tNODE\tIP\tSERVICE ACCOUNT\tPHASE\tMESH\tRESTARTS\tMESSAGE")
	for _, p := range st.Pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Namespace, p.Name, p.Node, dash(p.IP), dash(p.ServiceAccount),
			p.Phase, meshState(p.Redirection), p.Restarts, dash(p.Message))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NAMESPACE\tSERVICE\tCLUSTER IP\tPORTS")
	for _, s := range st.Services {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d->%s/%s", p.Port, p.TargetPort, p.Protocol))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Namespace, s.Name, s.ClusterIP, strings.Join(ports, ","))
	}
	if len(st.Waypoints) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "NAMESPACE\tWAYPOINT\tFOR\tADDRESSES\tACCEPTED\tPROGRAMMED\tSERVICES\tWORKLOADS\tREASON")
		for _, w := range st.Waypoints {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\t%s\t%s\n", w.Namespace, w.Name, w.For, dash(strings.Join(w.Addresses, ",")),
				w.Accepted, w.Programmed, dash(strings.Join(w.Services, ",")), dash(strings.Join(w.Workloads, ",")), dash(w.Reason))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.BindingProblems) > 0 {
		fmt.Fprintln(out, "\nWAYPOINT LABELS NOT IN EFFECT (traffic goes without a waypoint)")
		for _, b := range st.BindingProblems {
			fmt.Fprintf(out, "  %s (label from %s): %s\n", b.Object, b.From, b.Problem)
		}
	}
	var bad []string
	for _, r := range st.Routes {
		for _, c := range r.Conditions {
			if c.Status != "True" {
				bad = append(bad, fmt.Sprintf("  %s %s/%s parentRefs[%d]: %s %s (%s): %s", r.Kind, r.Namespace, r.Name, r.Parent, c.Type, c.Status, c.Reason, c.Message))
			}
		}
	}
	if len(bad) > 0 {
		fmt.Fprintln(out, "\nROUTE CONDITIONS")
		for _, l := range bad {
			fmt.Fprintln(out, l)
		}
	}
	if len(st.PolicyWarnings) > 0 {
		fmt.Fprintln(out, "\nPOLICY WARNINGS")
		for _, w := range st.PolicyWarnings {
			fmt.Fprintln(out, "  "+w)
		}
	}
	printConfigErrors(out, st.ConfigErrors)
	return nil
}

// rejectedFiles lists the files of errs once each, in order.
func rejectedFiles(errs []ConfigError) []string {
	var files []string
	for _, e := range errs {
		if !slices.Contains(files, e.File) {
			files = append(files, e.File)
		}
	}
	return files
}

// printConfigErrors writes the CONFIG ERRORS section: each rejected file
// and its problems, in the order given (sorted by file).
func printConfigErrors(out io.Writer, errs []ConfigError) {
	if len(errs) == 0 {
		return
	}
	files := rejectedFiles(errs)
	byFile := map[string][]string{}
	for _, e := range errs {
		byFile[e.File] = append(byFile[e.File], e.Message)
	}
	fmt.Fprintln(out, "\nCONFIG ERRORS (these files are rejected: nothing new is applied from them, and what they defined before, if anything, stays in force until they are fixed or removed)")
	for _, f := range files {
		fmt.Fprintf(out, "  %s\n", f)
		for _, m := range byFile[f] {
			fmt.Fprintf(out, "    %s\n", m)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Exec replaces the current process with argv running inside the pod's
// network namespace, with the pod's environment. It returns only on error.
func Exec(stateDir, podRef string, argv []string) error {
	if err := RequireRoot(); err != nil {
		return err
	}
	if len(argv) == 0 {
		return errors.New("exec: no command given (ambit local exec POD -- CMD...)")
	}
	st, err := ReadState(stateDir)
	if err != nil {
		return err
	}
	pod, err := st.FindPod(podRef)
	if err != nil {
		return err
	}
	if pod.Netns == "" {
		return fmt.Errorf("pod %s/%s has no network namespace (phase %s: %s)", pod.Namespace, pod.Name, pod.Phase, pod.Message)
	}
	env := pod.Env
	if len(env) == 0 {
		env = os.Environ()
	}
	return NSExec(pod.Netns, argv, env, NSExecOptions{})
}

// NSExecOptions tunes NSExec.
type NSExecOptions struct {
	// DieWithParent has the kernel SIGKILL the command when the process
	// that started nsexec dies (PR_SET_PDEATHSIG), so pods and ztunnels
	// never outlive a supervisor killed with SIGKILL. The setting the
	// parent asked for at fork lives on the main thread, and Go may exec
	// from another one, so it is set again on the thread that execs.
	DieWithParent bool
}

// NSExec replaces the current process with argv inside the network
// namespace at netnsPath. It returns only on error.
func NSExec(netnsPath string, argv, env []string, opts NSExecOptions) error {
	if len(argv) == 0 {
		return errors.New("nsexec: no command")
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		for _, kv := range env {
			if p, ok := strings.CutPrefix(kv, "PATH="); ok {
				os.Setenv("PATH", p)
			}
		}
		lp, err := exec.LookPath(path)
		if err != nil {
			return fmt.Errorf("nsexec: %w", err)
		}
		path = lp
	}
	fd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("nsexec: opening %s: %w", netnsPath, err)
	}
	// The namespace and the parent-death signal are properties of the
	// thread: stay on this one until exec.
	runtime.LockOSThread()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("nsexec: entering %s: %w", netnsPath, err)
	}
	unix.Close(fd)
	if opts.DieWithParent {
		ppid := os.Getppid()
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			return fmt.Errorf("nsexec: setting the parent-death signal: %w", err)
		}
		// The parent may have died before the signal was armed.
		if ppid == 1 || os.Getppid() != ppid {
			return errors.New("nsexec: the parent process is gone; not starting the command")
		}
	}
	return fmt.Errorf("nsexec: exec %s: %w", path, syscall.Exec(path, argv, env))
}

// ParseNSExecArgs parses the arguments of `ambit local nsexec`:
// [--die-with-parent] NETNS -- CMD [ARGS...].
func ParseNSExecArgs(args []string) (netnsPath string, argv []string, opts NSExecOptions, err error) {
	if len(args) > 0 && args[0] == "--die-with-parent" {
		opts.DieWithParent = true
		args = args[1:]
	}
	if len(args) < 3 || args[1] != "--" || args[0] == "" {
		return "", nil, opts, errors.New("usage: ambit local nsexec [--die-with-parent] NETNS -- CMD [ARGS...]")
	}
	return args[0], args[2:], opts, nil
}

// AdminGet fetches a path from a node's ztunnel admin endpoint
// (127.0.0.1:15000 inside the node's namespace).
func AdminGet(stateDir, node, path string) ([]byte, error) {
	st, err := ReadState(stateDir)
	if err != nil {
		return nil, err
	}
	var netns string
	var names []string
	for _, n := range st.Nodes {
		names = append(names, n.Name)
		if n.Name == node {
			netns = n.Netns
		}
	}
	if netns == "" {
		return nil, fmt.Errorf("no node %q (nodes: %s)", node, strings.Join(names, ", "))
	}
	body, err := httpGetIn(netns, "127.0.0.1:15000", path)
	if err != nil {
		return nil, fmt.Errorf("ztunnel admin on %s: %w", node, err)
	}
	return body, nil
}

// ControlPlaneGet fetches a path (/ready, /metrics, /debug/store,
// /debug/proxies) from the local mesh's control plane, which serves them on
// the underlay.
func ControlPlaneGet(stateDir, path string) ([]byte, error) {
	if _, err := ReadState(stateDir); err != nil {
		return nil, err
	}
	body, err := httpGetIn(netnsPath(underlayNetns), fmt.Sprintf("%s:%d", controlPlaneIP, controlPlaneHTTPPort), path)
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	return body, nil
}

// httpGetIn does one HTTP GET to addr from inside a network namespace.
// WaypointGet fetches path from the admin port of waypoint namespace/name
// (local mode: the waypoint runs as the pod of its Gateway's name).
func WaypointGet(stateDir, namespace, name, path string) ([]byte, error) {
	st, err := ReadState(stateDir)
	if err != nil {
		return nil, err
	}
	p, err := st.FindPod(namespace + "/" + name)
	if err != nil {
		return nil, fmt.Errorf("waypoint %s/%s: %w", namespace, name, err)
	}
	return httpGetIn(p.Netns, "127.0.0.1:15000", path)
}

func httpGetIn(netns, addr, path string) ([]byte, error) {
	var body []byte
	err := nsnet.Do(netns, func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
		}
		body = b
		return nil
	})
	return body, err
}
