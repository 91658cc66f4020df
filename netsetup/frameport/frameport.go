// Package frameport is the frame path's view of a link: a port reads or
// writes whole frames, each behind its virtio-net header (netsetup/vnet).
// A PU's TAPs (netsetup/tap) are its readers, the AF_PACKET injectors
// (netsetup/inject) its writers; Chan is a port in memory, so that the
// daemon's frame loop runs in tests without root (as wireguard-go's
// tun.Device and tun/tuntest).
package frameport

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
)

// Reader reads frames (a TAP).
type Reader interface {
	// Read reads one frame, virtio-net header first, into b and returns
	// its length. A closed port returns an error for which IsClosed holds.
	Read(b []byte) (int, error)
	Close() error
}

// Writer writes frames (an injector).
type Writer interface {
	// Write sends one frame, virtio-net header first.
	Write(b []byte) error
	Close() error
}

// ErrTruncated: a frame did not fit the read buffer (it is dropped).
var ErrTruncated = errors.New("frameport: frame larger than the read buffer")

// IsClosed reports whether err says that the port was closed.
func IsClosed(err error) bool { return errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) }

// Chan is a port in memory: what is written to it is read from it, in
// order. Writes block while it holds its capacity of frames.
type Chan struct {
	frames chan []byte
	done   chan struct{}
	once   sync.Once
}

// NewChan returns a Chan that holds up to n frames.
func NewChan(n int) *Chan {
	return &Chan{frames: make(chan []byte, n), done: make(chan struct{})}
}

// Read returns the next frame written, waiting for one.
func (c *Chan) Read(b []byte) (int, error) {
	select {
	case f := <-c.frames:
		if len(f) > len(b) {
			return 0, ErrTruncated
		}
		return copy(b, f), nil
	case <-c.done:
		return 0, os.ErrClosed
	}
}

// Write queues a copy of b.
func (c *Chan) Write(b []byte) error {
	select {
	case <-c.done:
		return os.ErrClosed
	default:
	}
	select {
	case c.frames <- bytes.Clone(b):
		return nil
	case <-c.done:
		return os.ErrClosed
	}
}

// Close ends pending and later reads and writes.
func (c *Chan) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// Len is the number of frames written and not read yet.
func (c *Chan) Len() int { return len(c.frames) }
