package main

import (
	"bufio"
	"bytes"
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
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
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
				m.RSSMB = kb / 1024
			case "VmHWM":
				m.HWMMB = kb / 1024
			}
		}
	}
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
