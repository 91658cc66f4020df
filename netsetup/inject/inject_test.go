package inject_test

import (
	"errors"
	"testing"

	"github.com/trireme-go/trireme/netsetup/inject"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/testenv"
	"golang.org/x/sys/unix"
)

func TestInjectorErrors(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 1})
	n.MustDo(func() error {
		for _, idx := range []int{0, -3} {
			if _, err := inject.New(idx, 1); err == nil {
				t.Errorf("New(%d) accepted", idx)
			}
		}
		if _, err := inject.New(99999, 1); err == nil {
			t.Error("New on a missing interface succeeded")
		}
		j, err := inject.New(n.PUs[0].Link.HostIndex, 0x1234)
		if err != nil {
			return err
		}
		for _, l := range []int{0, vnet.HdrLen, vnet.HdrLen + 13} {
			if err := j.Write(make([]byte, l)); !errors.Is(err, inject.ErrShort) {
				t.Errorf("write of %d bytes: %v", l, err)
			}
		}
		// A well-formed broadcast frame with a zero virtio-net header goes out.
		frame := make([]byte, vnet.HdrLen+60)
		copy(frame[vnet.HdrLen:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
		if err := j.Write(frame); err != nil {
			t.Errorf("write: %v", err)
		}
		// A GSO header that does not match the frame is refused by the kernel, not sent.
		bad := vnet.Hdr{Flags: vnet.FlagNeedsCsum, GSOType: vnet.GSOTCPv4, GSOSize: 100, CsumStart: 5000, CsumOffset: 16}
		_ = bad.Encode(frame)
		if err := j.Write(frame); err == nil {
			t.Error("kernel accepted a frame with an impossible checksum offset")
		}
		if err := j.Close(); err != nil {
			return err
		}
		if err := j.Write(make([]byte, vnet.HdrLen+60)); !errors.Is(err, unix.EBADF) {
			t.Errorf("write after close: %v", err)
		}
		return j.Close()
	})
}

// TestWriteDoesNotAllocate: the injection path is per packet.
func TestWriteDoesNotAllocate(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 1})
	var j *inject.Injector
	n.MustDo(func() error {
		var err error
		j, err = inject.New(n.PUs[0].Link.HostIndex, 7)
		return err
	})
	defer j.Close()
	frame := make([]byte, vnet.HdrLen+60)
	copy(frame[vnet.HdrLen:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
	if a := testing.AllocsPerRun(200, func() {
		if err := j.Write(frame); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Write allocates %.1f times per packet", a)
	}
}
