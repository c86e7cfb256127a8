package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// cpuSeconds is this process's user+system CPU time so far
// (getrusage(RUSAGE_SELF): every thread of the control plane; the clients
// are another process).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// Memory is a reading of this process's memory.
type Memory struct {
	// RSSMB and HWMMB are VmRSS and VmHWM of /proc/self/status: resident
	// now, and the peak since the benchmark reset it (after generating
	// the mesh).
	RSSMB float64 `json:"rss_mb"`
	HWMMB float64 `json:"hwm_mb"`
	// HeapMB is the Go heap in use (runtime.MemStats.HeapInuse); SysMB
	// all the runtime got from the OS (Sys).
	HeapMB float64 `json:"heap_inuse_mb"`
	SysMB  float64 `json:"go_sys_mb"`
}

func readMemory() Memory {
	var m Memory
	m.RSSMB, m.HWMMB, _ = procRSS("self")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.HeapMB = float64(ms.HeapInuse) / (1 << 20)
	m.SysMB = float64(ms.Sys) / (1 << 20)
	return m
}

// resetPeakRSS makes VmHWM start again from the current RSS (Linux 4.0+:
// "5" to /proc/self/clear_refs); false if the kernel refused.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// loadAverage is the first three fields of /proc/loadavg: the machine is
// shared, and a busy neighbour shows in every figure.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// procRSS reads VmRSS and VmHWM (in MB) of /proc/<pid>/status.
func procRSS(pid string) (rss, hwm float64, err error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[0], 64)
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			hwm = kb / 1024
		}
	}
	return rss, hwm, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux architecture Go supports).
const clockTicks = 100

// procStat reads the parent pid, the command name and the user+system CPU
// seconds of /proc/<pid>/stat.
func procStat(pid int) (ppid int, comm string, cpu float64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", 0, err
	}
	s := string(b)
	// comm is in parentheses and may hold spaces: split after the last ')'.
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return 0, "", 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	comm = s[open+1 : end]
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return 0, "", 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return ppid, comm, (ut + st) / clockTicks, nil
}

// childrenNamed returns the pids of this process's children whose command
// name is one of names, by name.
func childrenNamed(names ...string) map[string]int {
	out := map[string]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, comm, _, err := procStat(pid)
		if err != nil || ppid != self {
			continue
		}
		for _, n := range names {
			// comm is truncated to 15 bytes ("kube-apiserver" fits).
			if comm == n || (len(n) > 15 && comm == n[:15]) {
				out[n] = pid
			}
		}
	}
	return out
}
