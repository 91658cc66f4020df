package pcapio

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane/fixtures"
)

func TestToEthernet(t *testing.T) {
	ip4 := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	ip6 := append([]byte{0x60}, make([]byte, 39)...)
	sll := append([]byte{0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00}, ip4...)
	sll2 := append([]byte{0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 1, 2, 3, 4, 5, 6, 0, 0}, ip6...)
	cases := []struct {
		name      string
		link      int
		in        []byte
		etherType uint16
		src       []byte
		payload   []byte
	}{
		{"raw ipv4 (101)", 101, ip4, 0x0800, make([]byte, 6), ip4},
		{"raw ipv6 (101)", 101, ip6, 0x86dd, make([]byte, 6), ip6},
		{"DLT_RAW 12", 12, ip4, 0x0800, make([]byte, 6), ip4},
		{"DLT_RAW 14", 14, ip6, 0x86dd, make([]byte, 6), ip6},
		{"linux sll", 113, sll, 0x0800, []byte{1, 2, 3, 4, 5, 6}, ip4},
		{"linux sll2", 276, sll2, 0x86dd, []byte{1, 2, 3, 4, 5, 6}, ip6},
	}
	for _, c := range cases {
		f, err := ToEthernet(c.link, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if uint16(f[12])<<8|uint16(f[13]) != c.etherType || !bytes.Equal(f[6:12], c.src) || !bytes.Equal(f[14:], c.payload) {
			t.Fatalf("%s: %x", c.name, f)
		}
	}
	if _, err := ToEthernet(127, ip4); !errors.Is(err, ErrLinkType) {
		t.Fatalf("radiotap: %v", err)
	}
	// Short cooked headers become frames the parser rejects, not panics.
	if f, err := ToEthernet(113, []byte{1, 2}); err != nil || len(f) != 14 {
		t.Fatalf("short sll: %v %x", err, f)
	}
}

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC)
	frames := [][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 1514)}
	for i, f := range frames {
		if err := w.Write(t0.Add(time.Duration(i)*time.Second), f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, f := range frames {
		p, err := r.Next()
		if err != nil || !bytes.Equal(p.Frame, f) || !p.Time.Equal(t0.Add(time.Duration(i)*time.Second)) || p.LinkType != 1 {
			t.Fatalf("packet %d: %v %v", i, err, p.Time)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	if _, _, err := Open(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("missing file opened")
	}
	if _, _, err := Open("/dev/null"); err == nil {
		t.Fatal("empty file accepted")
	}
}

// TestReadFile: whole captures, pcap and pcapng, with the counts their
// README gives; a missing file is an error naming it.
func TestReadFile(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"zeek-http-get.pcap": 14, "zeek-tcp-http-missing-syn.pcapng": 13} {
		ps, err := ReadFile(filepath.Join(dir, name))
		if err != nil || len(ps) != want {
			t.Errorf("%s: %d packets (%v), want %d", name, len(ps), err, want)
		}
	}
	if _, err := ReadFile(filepath.Join(dir, "no-such.pcap")); err == nil {
		t.Error("a missing capture read without error")
	}
}
