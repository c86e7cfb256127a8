package local

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestPlanNodes(t *testing.T) {
	nodes, err := planNodes(3)
	if err != nil {
		t.Fatal(err)
	}
	want := []NodeStatus{
		{Name: "node1", Netns: "/run/netns/ambit-node1", PodCIDR: "10.244.1.0/24", UnderlayIP: "172.30.0.11"},
		{Name: "node2", Netns: "/run/netns/ambit-node2", PodCIDR: "10.244.2.0/24", UnderlayIP: "172.30.0.12"},
		{Name: "node3", Netns: "/run/netns/ambit-node3", PodCIDR: "10.244.3.0/24", UnderlayIP: "172.30.0.13"},
	}
	for i := range want {
		if nodes[i] != want[i] {
			t.Errorf("node %d = %+v, want %+v", i, nodes[i], want[i])
		}
	}
	for _, n := range []int{0, -1, 17} {
		if _, err := planNodes(n); err == nil {
			t.Errorf("planNodes(%d) accepted", n)
		}
	}
}

func pod(ns, name, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{NodeName: node}}
}

func TestPlacePod(t *testing.T) {
	nodes, _ := planNodes(3)
	tests := []struct {
		name    string
		pod     *corev1.Pod
		perNode map[string]int
		want    string
		wantErr string
	}{
		{"nodeName wins", pod("a", "p", "node3"), map[string]int{"node3": 9}, "node3", ""},
		{"least loaded", pod("a", "p", ""), map[string]int{"node1": 2, "node2": 1, "node3": 1}, "node2", ""},
		{"empty mesh starts at node1", pod("a", "p", ""), map[string]int{}, "node1", ""},
		{"unknown node", pod("a", "p", "node9"), nil, "", `spec.nodeName "node9" is not a node of this mesh (nodes: node1, node2, node3)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := placePod(tc.pod, nodes, tc.perNode)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("placePod = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func svc(ns, name, clusterIP string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: clusterIP,
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
}

func TestVIPAllocator(t *testing.T) {
	a := newVIPAllocator(serviceCIDR)
	ip1, err := a.allocate(svc("demo", "echo", ""))
	if err != nil || !serviceCIDR.Contains(ip1) {
		t.Fatalf("allocate = %v, %v", ip1, err)
	}
	// Stable: same service, same VIP, in a fresh allocator too.
	again, _ := newVIPAllocator(serviceCIDR).allocate(svc("demo", "echo", ""))
	if again != ip1 {
		t.Errorf("VIP not stable: %v then %v", ip1, again)
	}
	if ip, _ := a.allocate(svc("demo", "echo", "")); ip != ip1 {
		t.Errorf("re-allocating the same service moved its VIP: %v -> %v", ip1, ip)
	}
	fixed, err := a.allocate(svc("demo", "fixed", "10.96.0.100"))
	if err != nil || fixed != netip.MustParseAddr("10.96.0.100") {
		t.Errorf("spec.clusterIP not honoured: %v %v", fixed, err)
	}
	if _, err := a.allocate(svc("demo", "clash", "10.96.0.100")); err == nil || !strings.Contains(err.Error(), "already used by demo/fixed") {
		t.Errorf("clash not refused: %v", err)
	}
	if _, err := a.allocate(svc("demo", "outside", "192.0.2.1")); err == nil || !strings.Contains(err.Error(), "outside the service CIDR") {
		t.Errorf("out-of-range clusterIP not refused: %v", err)
	}
	if ip, err := a.allocate(svc("demo", "headless", "None")); err != nil || ip.IsValid() {
		t.Errorf("headless service got %v, %v", ip, err)
	}
	a.release("demo", "fixed")
	if _, err := a.allocate(svc("demo", "clash", "10.96.0.100")); err != nil {
		t.Errorf("released VIP not reusable: %v", err)
	}
	// A tiny CIDR fills up with a clear error.
	small := newVIPAllocator(netip.MustParsePrefix("10.0.0.0/28"))
	var last error
	for i := 0; i < 10; i++ {
		_, last = small.allocate(svc("x", "s"+strings.Repeat("x", i), ""))
	}
	if last == nil || !strings.Contains(last.Error(), "is full") {
		t.Errorf("full CIDR: %v", last)
	}
	st := serviceStatus(svc("demo", "echo", ""), ip1)
	if st.ClusterIP != ip1.String() || st.Ports[0].TargetPort != "8080" || st.Ports[0].Protocol != "TCP" {
		t.Errorf("serviceStatus = %+v", st)
	}
}

func TestPodEnvAndArgv(t *testing.T) {
	p := pod("demo", "echo-1", "node1")
	p.Spec.ServiceAccountName = "echo"
	p.Spec.Containers = []corev1.Container{{Name: "c", Command: []string{"ambit", "sample"}, Args: []string{"echo"}, Env: []corev1.EnvVar{
		{Name: "A", Value: "1"},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
		{Name: "UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
	}}}
	env, err := podEnv(p, &PodStatus{UID: "u-1", Node: "node1", IP: "10.244.1.3"}, "/opt/ambit/bin")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(env, " ")
	for _, want := range []string{"PATH=/opt/ambit/bin:", "HOSTNAME=echo-1", "A=1", "POD_NAME=echo-1", "NS=demo", "IP=10.244.1.3", "NODE=node1", "SA=echo", "UID=u-1"} {
		if !strings.Contains(got, want) {
			t.Errorf("env %q lacks %q", got, want)
		}
	}
	argv, err := podArgv(p)
	if err != nil || strings.Join(argv, " ") != "ambit sample echo" {
		t.Errorf("argv = %v, %v", argv, err)
	}
	p.Spec.Containers[0].Command = nil
	if _, err := podArgv(p); err == nil || !strings.Contains(err.Error(), "command is required") {
		t.Errorf("missing command: %v", err)
	}
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}}}
	if _, err := podEnv(p, &PodStatus{}, "/bin"); err == nil {
		t.Error("unsupported fieldRef accepted")
	}
}

func TestFindPod(t *testing.T) {
	st := &State{Pods: []PodStatus{{Namespace: "a", Name: "x"}, {Namespace: "b", Name: "x"}, {Namespace: "a", Name: "y"}}}
	tests := []struct {
		ref, wantNS, wantErr string
	}{
		{"a/x", "a", ""},
		{"b/x", "b", ""},
		{"y", "a", ""},
		{"x", "", "ambiguous"},
		{"z", "", `no pod "z"`},
		{"c/x", "", `no pod "c/x"`},
	}
	for _, tc := range tests {
		p, err := st.FindPod(tc.ref)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("FindPod(%q) err = %v, want %q", tc.ref, err, tc.wantErr)
			}
			continue
		}
		if err != nil || p.Namespace != tc.wantNS {
			t.Errorf("FindPod(%q) = %+v, %v", tc.ref, p, err)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadState(dir); err == nil || !strings.Contains(err.Error(), "no local mesh is running") {
		t.Fatalf("missing state: %v", err)
	}
	in := &State{Nodes: []NodeStatus{{Name: "node1"}}, Pods: []PodStatus{{Namespace: "a", Name: "p", Phase: "Running"}}, Ready: true}
	if err := writeState(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadState(dir)
	if err != nil || !out.Ready || out.Pods[0].Phase != "Running" || out.Nodes[0].Name != "node1" {
		t.Fatalf("round trip: %+v %v", out, err)
	}
}

func TestPodNetnsName(t *testing.T) {
	long1 := strings.Repeat("n", 40)
	tests := []struct {
		ns, name string
		want     string // exact, or "" to check only the shape
	}{
		{"demo", "echo-1", "ambit-pod-demo-echo-1"},
		{"demo", "a.b", "ambit-pod-demo-a.b"},
		{"demo-a", "b", ""},
		{"demo", "a-b", "ambit-pod-demo-a-b"},
		{"a-very-long-namespace-name-indeed", "and-a-very-long-pod-name-as-well-too", ""},
		{"a-very-long-namespace-name-indeed", "and-a-very-long-pod-name-as-well-tooo", ""},
		{long1, "p", ""},
		{long1 + "x", "p", ""},
		{"x", strings.Repeat("p", 253), ""},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got := podNetnsName(tc.ns, tc.name)
		if tc.want != "" && got != tc.want {
			t.Errorf("podNetnsName(%q, %q) = %q, want %q", tc.ns, tc.name, got, tc.want)
		}
		if len(got) > 64 || !strings.HasPrefix(got, NamePrefix+"pod-") || strings.ContainsAny(got, "/\x00") {
			t.Errorf("podNetnsName(%q, %q) = %q (%d bytes): not a short ambit-pod- file name", tc.ns, tc.name, got, len(got))
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("podNetnsName(%q, %q) = %q, same as for %s", tc.ns, tc.name, got, prev)
		}
		seen[got] = tc.ns + "/" + tc.name
		if again := podNetnsName(tc.ns, tc.name); again != got {
			t.Errorf("podNetnsName(%q, %q) not stable: %q then %q", tc.ns, tc.name, got, again)
		}
	}
}

func TestPIDFile(t *testing.T) {
	start, err := procStartTime(os.Getpid())
	if err != nil || start == 0 {
		t.Fatalf("own start time: %d, %v", start, err)
	}
	pid, got, err := parsePIDFile(pidFileContent(4242, start))
	if err != nil || pid != 4242 || got != start {
		t.Fatalf("round trip: %d %d %v", pid, got, err)
	}
	for _, bad := range []string{"", "4242", "4242 x", "x 1", "1 5", "-3 5", "4242 5 6"} {
		if _, _, err := parsePIDFile([]byte(bad)); err == nil {
			t.Errorf("parsePIDFile(%q) accepted", bad)
		}
	}
	stats := []struct {
		stat string
		want uint64
		ok   bool
	}{
		{"1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 77 100 200", 77, true},
		// The command name may hold spaces and parentheses.
		{"9 (a) b) (c) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 123456789 1 2", 123456789, true},
		{"9 (short) R 1 2 3", 0, false},
		{"no parenthesis at all", 0, false},
		{"1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 1", 0, false},
	}
	for _, tc := range stats {
		got, err := parseStatStartTime([]byte(tc.stat))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseStatStartTime(%q) = %d, %v; want %d ok=%v", tc.stat, got, err, tc.want, tc.ok)
		}
	}
	// A pid file naming a live process with another start time (a
	// recycled PID) is not our supervisor.
	dir := t.TempDir()
	if err := os.WriteFile(Paths{dir}.PIDFile(), pidFileContent(os.Getpid(), start+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid, ok := supervisorPID(dir); ok {
		t.Errorf("supervisorPID accepted a start-time mismatch (pid %d)", pid)
	}
	// The right start time but not an `ambit local run` command line.
	if err := os.WriteFile(Paths{dir}.PIDFile(), pidFileContent(os.Getpid(), start), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid, ok := supervisorPID(dir); ok {
		t.Errorf("supervisorPID accepted a process that is not the supervisor (pid %d)", pid)
	}
}

func TestParseNSExecArgs(t *testing.T) {
	tests := []struct {
		args    []string
		netns   string
		argv    []string
		die     bool
		wantErr bool
	}{
		{args: []string{"/run/netns/x", "--", "sleep", "1"}, netns: "/run/netns/x", argv: []string{"sleep", "1"}},
		{args: []string{"--die-with-parent", "/run/netns/x", "--", "ztunnel"}, netns: "/run/netns/x", argv: []string{"ztunnel"}, die: true},
		// Flags after "--" belong to the command.
		{args: []string{"/n", "--", "sh", "--die-with-parent"}, netns: "/n", argv: []string{"sh", "--die-with-parent"}},
		{args: []string{"/n", "--"}, wantErr: true},
		{args: []string{"/n", "sleep", "1"}, wantErr: true},
		{args: []string{"--die-with-parent", "--", "x"}, wantErr: true},
		{args: []string{"", "--", "x"}, wantErr: true},
		{args: nil, wantErr: true},
	}
	for _, tc := range tests {
		netns, argv, opts, err := ParseNSExecArgs(tc.args)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "usage:") {
				t.Errorf("ParseNSExecArgs(%q) = %q %q, %v; want a usage error", tc.args, netns, argv, err)
			}
			continue
		}
		if err != nil || netns != tc.netns || strings.Join(argv, " ") != strings.Join(tc.argv, " ") || opts.DieWithParent != tc.die {
			t.Errorf("ParseNSExecArgs(%q) = %q %q %+v, %v; want %q %q die=%v", tc.args, netns, argv, opts, err, tc.netns, tc.argv, tc.die)
		}
	}
}
