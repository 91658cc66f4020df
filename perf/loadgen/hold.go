package loadgen

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Held is a set of idle connections kept open to a server (ping mode), as
// long-lived connections of real workloads are: Check makes one round trip
// on each.
type Held struct {
	mu    sync.Mutex
	conns []*os.File
	b     [1]byte
}

// Hold opens n idle connections to the server. On error the ones opened
// are closed.
func (c *Client) Hold(ctx context.Context, n int) (*Held, error) {
	fac, err := c.startFactory(min(n, 256))
	if err != nil {
		return nil, err
	}
	defer fac.close()
	h := &Held{}
	for range n {
		if err := ctx.Err(); err != nil {
			h.Close()
			return nil, err
		}
		fd, err := fac.get()
		if err != nil {
			h.Close()
			return nil, err
		}
		f, _, err := c.connect(fd, c.Timeout)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("loadgen: hold connection %d: %w", len(h.conns)+1, err)
		}
		h.conns = append(h.conns, f)
		if err := h.roundTrip(f, modePing, c.Timeout); err != nil { // the mode byte, echoed
			h.Close()
			return nil, fmt.Errorf("loadgen: hold connection %d: %w", len(h.conns), err)
		}
	}
	return h, nil
}

func (h *Held) roundTrip(f *os.File, b byte, timeout time.Duration) error {
	h.b[0] = b
	f.SetDeadline(time.Now().Add(timeout))
	if _, err := f.Write(h.b[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(f, h.b[:]); err != nil {
		return err
	}
	if h.b[0] != b {
		return fmt.Errorf("echo %q, sent %q", h.b[0], b)
	}
	return nil
}

// Check makes one round trip on every held connection and returns how many
// answered and how many failed (a failed one is closed and not checked
// again).
func (h *Held) Check(timeout time.Duration) (ok, failed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	live := h.conns[:0]
	for _, f := range h.conns {
		if err := h.roundTrip(f, 'k', timeout); err != nil {
			failed++
			f.Close()
			continue
		}
		ok++
		live = append(live, f)
	}
	h.conns = live
	return ok, failed
}

// Len is the number of connections still held.
func (h *Held) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// Close closes every held connection.
func (h *Held) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.conns {
		f.Close()
	}
	h.conns = nil
}

// Park moves every held connection into p (see Parking): they stay open,
// out of the process's file table, and are no longer h's.
func (h *Held) Park(p *Parking) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.conns) > 0 {
		f := h.conns[len(h.conns)-1]
		fd, err := dupFile(f)
		if err != nil {
			return err
		}
		if err := p.Add(fd); err != nil {
			return err
		}
		f.Close()
		h.conns = h.conns[:len(h.conns)-1]
	}
	return p.Flush()
}

// dupFile duplicates the descriptor of f (without putting f into blocking
// mode, as f.Fd would).
func dupFile(f interface {
	SyscallConn() (syscall.RawConn, error)
}) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.Dup(int(fd)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("loadgen: dup: %w", derr)
	}
	unix.CloseOnExec(dup)
	return dup, nil
}
