package loadgen

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Parking holds sockets outside the process's file table, so that one
// process can keep more connections open than its RLIMIT_NOFILE allows
// (which it may not be able to raise: without CAP_SYS_RESOURCE the hard
// limit stays): a socket sent over a Unix socket pair (SCM_RIGHTS) and not
// yet received stays open, referenced by the message in flight. The
// kernel bounds the files a user has in flight by RLIMIT_NOFILE too, but
// not for a process with CAP_SYS_ADMIN, as the perf run (root, creating
// namespaces) has. Closing the Parking closes every socket parked in it.
type Parking struct {
	mu      sync.Mutex
	pair    [2]int // sent on [0], queued on [1]
	n       int    // sockets parked
	msgs    int    // messages queued
	pending []int  // added, not yet sent (Add)
	oob     []byte
	dummy   [1]byte
}

// parkBatch is how many files one message carries (the kernel's
// SCM_MAX_FD is 253).
const parkBatch = 250

// NewParking makes an empty parking.
func NewParking() (*Parking, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loadgen: parking: %w", err)
	}
	// Room for the queued messages (a small buffer would block the
	// sender); forcing past wmem_max needs CAP_NET_ADMIN, as root has.
	if err := unix.SetsockoptInt(pair[0], unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 256<<20); err != nil {
		unix.Close(pair[0])
		unix.Close(pair[1])
		return nil, fmt.Errorf("loadgen: parking: %w", err)
	}
	return &Parking{pair: pair, oob: make([]byte, unix.CmsgSpace(parkBatch*4))}, nil
}

// Len is the number of sockets parked (or added).
func (p *Parking) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n + len(p.pending)
}

// Add parks fd, which it owns from then on, with the next ones added: a
// message carries parkBatch files, so up to parkBatch-1 of them stay in
// the file table until the batch is full or Flush.
func (p *Parking) Add(fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = append(p.pending, fd)
	if len(p.pending) < parkBatch {
		return nil
	}
	return p.flush()
}

// Flush parks the sockets added and not yet parked.
func (p *Parking) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flush()
}

func (p *Parking) flush() error {
	err := p.send(p.pending)
	for _, fd := range p.pending {
		unix.Close(fd)
	}
	p.pending = p.pending[:0]
	return err
}

// Park moves fds into the parking: on success they are closed in this
// process (the sockets stay open); on error none is.
func (p *Parking) Park(fds []int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.send(fds); err != nil {
		return err
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	return nil
}

func (p *Parking) send(fds []int) error {
	if p.pair[0] < 0 {
		return errors.New("loadgen: parking closed")
	}
	for len(fds) > 0 {
		n := min(len(fds), parkBatch)
		if err := unix.Sendmsg(p.pair[0], p.dummy[:], unix.UnixRights(fds[:n]...), nil, 0); err != nil {
			return fmt.Errorf("loadgen: park %d sockets: %w", n, err)
		}
		p.n += n
		p.msgs++
		fds = fds[n:]
	}
	return nil
}

// Visit takes the parked sockets out, group messages (up to
// group*parkBatch sockets, which must fit the file table) at a time, calls
// fn on them and parks again the sockets fn keeps (keep[i] for fds[i]);
// the others are closed. It returns how many were kept and how many
// closed.
func (p *Parking) Visit(group int, fn func(fds []int) (keep []bool)) (kept, closed int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.flush(); err != nil {
		return 0, 0, err
	}
	closeAll := func(fds []int) {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	for left := p.msgs; left > 0; {
		var fds []int
		for k := 0; k < max(group, 1) && left > 0; k++ {
			got, err := p.receive()
			if err != nil {
				closeAll(fds)
				return kept, closed + len(fds), err
			}
			left--
			fds = append(fds, got...)
		}
		keep := fn(fds)
		var again []int
		for i, fd := range fds {
			if i < len(keep) && keep[i] {
				again = append(again, fd)
			} else {
				unix.Close(fd)
				closed++
			}
		}
		err := p.send(again)
		closeAll(again)
		if err != nil {
			return kept, closed + len(again), err
		}
		kept += len(again)
	}
	return kept, closed, nil
}

// receive takes the files of the first message queued.
func (p *Parking) receive() ([]int, error) {
	n, oobn, _, _, err := unix.Recvmsg(p.pair[1], p.dummy[:], p.oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("loadgen: unpark: %w", err)
	}
	cmsgs, perr := unix.ParseSocketControlMessage(p.oob[:oobn])
	var fds []int
	if perr == nil && len(cmsgs) == 1 {
		fds, perr = unix.ParseUnixRights(&cmsgs[0])
	}
	if n != 1 || perr != nil || len(cmsgs) != 1 {
		return nil, fmt.Errorf("loadgen: unpark: a message of %d bytes with %d control messages: %v", n, len(cmsgs), perr)
	}
	p.msgs--
	p.n -= len(fds)
	return fds, nil
}

// Close closes the parking and with it every socket parked.
func (p *Parking) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pair[0] < 0 {
		return
	}
	for _, fd := range p.pending {
		unix.Close(fd)
	}
	p.pending = nil
	unix.Close(p.pair[0])
	unix.Close(p.pair[1])
	p.pair = [2]int{-1, -1}
	p.n, p.msgs = 0, 0
}

// checkGroup is the messages of sockets CheckParked takes out at a time
// (8,000 sockets).
const checkGroup = 32

// CheckParked writes a byte on every parked connection (client sockets of
// held connections) and waits until the peer's kernel has acknowledged it
// (the socket's send queue is empty): the connection still carries data
// one way and acknowledgements the other through the path under test. A
// connection that does not within timeout is closed and counted as failed.
func CheckParked(p *Parking, timeout time.Duration) (ok, failed int, err error) {
	// Thousands at a time: a connection that fails costs the whole
	// timeout, once per group rather than once per message.
	return p.Visit(checkGroup, func(fds []int) []bool {
		keep := make([]bool, len(fds))
		var waiting []int
		for i, fd := range fds {
			if _, err := unix.Write(fd, []byte{'k'}); err == nil {
				keep[i] = true
				waiting = append(waiting, i)
			}
		}
		deadline := time.Now().Add(timeout)
		for len(waiting) > 0 {
			rest := waiting[:0]
			for _, i := range waiting {
				q, err := unix.IoctlGetInt(fds[i], unix.SIOCOUTQ)
				soerr, serr := unix.GetsockoptInt(fds[i], unix.SOL_SOCKET, unix.SO_ERROR)
				switch {
				case err != nil || serr != nil || soerr != 0: // e.g. reset
					keep[i] = false
				case q > 0:
					rest = append(rest, i)
				}
			}
			waiting = rest
			if len(waiting) == 0 {
				break
			}
			if time.Now().After(deadline) {
				for _, i := range waiting {
					keep[i] = false
				}
				break
			}
			time.Sleep(time.Millisecond)
		}
		return keep
	})
}
