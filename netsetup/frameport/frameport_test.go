package frameport

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// A Chan hands back what was written, in order, as copies; a frame larger
// than the read buffer is reported, not cut; Close ends reads and writes.
func TestChan(t *testing.T) {
	c := NewChan(4)
	a, b := []byte("first"), []byte("second frame")
	for _, f := range [][]byte{a, b} {
		if err := c.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	a[0] = 'X' // the port holds its own copy
	buf := make([]byte, 64)
	for _, want := range []string{"first", "second frame"} {
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}
	if err := c.Write(bytes.Repeat([]byte{1}, 65)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); !errors.Is(err, ErrTruncated) {
		t.Fatalf("oversized frame: %v, want ErrTruncated", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	c.Close()
	select {
	case err := <-done:
		if !IsClosed(err) {
			t.Fatalf("read after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a blocked read did not end at Close")
	}
	if err := c.Write(a); !IsClosed(err) {
		t.Fatalf("write after close: %v", err)
	}
}
