package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// clientProcess is the parent's side of the client process: it starts the
// process, sends it commands and keeps, per client, what it reported.
type clientProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when stdout ends

	mu      sync.Mutex
	clients map[int]*clientView
	changed chan struct{} // closed and replaced on every event
	err     error         // the first error a client reported
	want    *Expected     // what a full push holds
}

// clientView is what one client reported.
type clientView struct {
	last     clientEvent          // the last "msg" event
	messages int                  // responses received
	maxSize  int                  // largest response, bytes
	bytes    int64                // all responses, bytes
	byName   map[string]timedItem // the latest detail per resource name
	closed   bool
	digest   *clientEvent // the answer to the last "digest" command
	// addressMessages counts the address responses; fullAt is when the
	// client first held a full push (0: not yet), after fullMessages
	// responses of which fullAddressMessages were addresses.
	addressMessages                   int
	fullAt                            int64
	fullMessages, fullAddressMessages int
}

type timedItem struct {
	detail
	t int64
}

// startClients re-runs this binary as the client process against addr.
func startClients(ctx context.Context, addr string) (*clientProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), clientEnv+"="+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	p := &clientProcess{cmd: cmd, stdin: stdin, done: make(chan struct{}), clients: map[int]*clientView{}, changed: make(chan struct{})}
	go p.read(stdout)
	return p, nil
}

func (p *clientProcess) read(r io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev clientEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			p.fail(fmt.Errorf("client process: bad output %q: %w", sc.Text(), err))
			continue
		}
		p.mu.Lock()
		v := p.view(ev.Client)
		switch ev.Event {
		case "msg":
			v.last = ev
			v.messages++
			v.maxSize = max(v.maxSize, ev.Size)
			v.bytes += int64(ev.Size)
			if ev.Type == "address" {
				v.addressMessages++
			}
			if p.want != nil && v.fullAt == 0 && p.want.heldBy(ev) {
				v.fullAt, v.fullMessages, v.fullAddressMessages = ev.T, v.messages, v.addressMessages
			}
			for _, d := range ev.Details {
				v.byName[d.Name] = timedItem{detail: d, t: ev.T}
			}
			if ev.Err != "" && p.err == nil {
				p.err = fmt.Errorf("client %d rejected a response: %s", ev.Client, ev.Err)
			}
		case "error":
			if p.err == nil {
				p.err = fmt.Errorf("client %d: %s", ev.Client, ev.Err)
			}
		case "digest":
			d := ev
			v.digest = &d
		case "closed":
			v.closed = true
		}
		p.notifyLocked()
		p.mu.Unlock()
	}
	p.fail(errors.New("client process ended"))
}

func (p *clientProcess) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
	p.notifyLocked()
}

func (p *clientProcess) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *clientProcess) view(id int) *clientView {
	v := p.clients[id]
	if v == nil {
		v = &clientView{byName: map[string]timedItem{}}
		p.clients[id] = v
	}
	return v
}

// expect sets what a full push holds.
func (p *clientProcess) expect(e Expected) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.want = &e
}

// command sends one command line to the process.
func (p *clientProcess) command(format string, args ...any) error {
	if _, err := fmt.Fprintf(p.stdin, format+"\n", args...); err != nil {
		return fmt.Errorf("client process: %w", err)
	}
	return nil
}

// wait returns once cond holds (called with the lock held, on every
// event), a client failed, or the timeout passed.
func (p *clientProcess) wait(ctx context.Context, timeout time.Duration, what string, cond func(map[int]*clientView) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		p.mu.Lock()
		ok, err, ch := cond(p.clients), p.err, p.changed
		p.mu.Unlock()
		switch {
		case ok:
			return nil
		case err != nil:
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		}
	}
}

// digestOf asks client id for the digests of what it holds and returns its
// answer.
func (p *clientProcess) digestOf(ctx context.Context, timeout time.Duration, id int) (clientEvent, error) {
	p.mu.Lock()
	p.view(id).digest = nil
	p.mu.Unlock()
	if err := p.command("digest %d", id); err != nil {
		return clientEvent{}, err
	}
	var out clientEvent
	err := p.wait(ctx, timeout, fmt.Sprintf("client %d's digest", id), func(v map[int]*clientView) bool {
		if d := v[id].digest; d != nil {
			out = *d
			return true
		}
		return false
	})
	if err == nil && out.Err != "" {
		err = fmt.Errorf("client %d's digest: %s", id, out.Err)
	}
	return out, err
}

// snapshot returns a copy of one client's view.
func (p *clientProcess) snapshot(id int) clientView {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := *p.view(id)
	v.byName = nil
	return v
}

// stop ends the process and returns the CPU it used.
func (p *clientProcess) stop() (cpuSeconds float64, err error) {
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
	}
	if err := p.cmd.Wait(); err != nil {
		return 0, fmt.Errorf("client process: %w", err)
	}
	st := p.cmd.ProcessState
	return (st.UserTime() + st.SystemTime()).Seconds(), nil
}
