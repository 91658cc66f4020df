package perf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/trireme-go/trireme/netsetup/steer"
)

// NftCount is what the node's steering tables hold, read through
// google/nftables: tables, chains and rules, and the elements of the
// authorized-flow sets ("a4_<pu>", "a6_<pu>").
type NftCount struct {
	Tables       int `json:"tables"`
	Chains       int `json:"chains"`
	Rules        int `json:"rules"`
	Sets         int `json:"sets"`
	AuthElements int `json:"authorizedElements"`
}

// nftConn opens an nftables connection in a named namespace; close the
// returned handle after use.
func nftConn(name string) (*nftables.Conn, func(), error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, nil, fmt.Errorf("perf: netns %s: %w", name, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("perf: nftables in %s: %w", name, err)
	}
	return c, func() { ns.Close() }, nil
}

// countNft reads the trireme netdev tables of a node namespace. With
// elements, it also counts the authorized sets' elements (a dump of each).
func countNft(node string, elements bool) (NftCount, error) {
	var n NftCount
	c, done, err := nftConn(node)
	if err != nil {
		return n, err
	}
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return n, fmt.Errorf("perf: list tables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return n, fmt.Errorf("perf: list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table == nil || !strings.HasPrefix(ch.Table.Name, steer.TablePrefix) {
			continue
		}
		n.Chains++
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return n, fmt.Errorf("perf: rules of %s/%s: %w", ch.Table.Name, ch.Name, err)
		}
		n.Rules += len(rules)
	}
	for _, t := range tables {
		if !strings.HasPrefix(t.Name, steer.TablePrefix) {
			continue
		}
		n.Tables++
		sets, err := c.GetSets(t)
		if err != nil {
			return n, fmt.Errorf("perf: sets of %s: %w", t.Name, err)
		}
		n.Sets += len(sets)
		if !elements {
			continue
		}
		for _, s := range sets {
			if !strings.HasPrefix(s.Name, "a4_") && !strings.HasPrefix(s.Name, "a6_") {
				continue
			}
			els, err := c.GetSetElements(s)
			if err != nil {
				return n, fmt.Errorf("perf: elements of %s/%s: %w", t.Name, s.Name, err)
			}
			// A dump taken while the set resizes may list an element
			// twice: count keys.
			keys := make(map[string]struct{}, len(els))
			for _, e := range els {
				keys[string(e.Key)] = struct{}{}
			}
			n.AuthElements += len(keys)
		}
	}
	return n, nil
}

// kernelMemory is the kernel's unreclaimable slab, per-CPU and vmalloc
// memory (/proc/meminfo SUnreclaim + Percpu + VmallocUsed), in bytes: where
// nftables set elements, their per-CPU counters and their hash tables live.
func kernelMemory() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	var sum uint64
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "SUnreclaim" && k != "Percpu" && k != "VmallocUsed") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("perf: /proc/meminfo %s: %w", k, err)
		}
		sum += kb << 10
		found++
	}
	if found != 3 {
		return 0, fmt.Errorf("perf: /proc/meminfo lacks SUnreclaim, Percpu or VmallocUsed")
	}
	return sum, nil
}

// authSetKey4 is the key of an IPv4 authorized set as steer makes it
// (saddr . daddr . l4proto . sport . dport).
var authSetKey4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)

// SetCalibration is the kernel memory one authorized-set element takes,
// measured in a namespace of its own: a set of the same shape as a PU's
// (concatenated 5-tuple key, per-element timeout, counter) filled with
// Elements elements, Reps times; BytesPerElement is the median of the
// kernelMemory deltas divided by Elements.
type SetCalibration struct {
	Elements        int       `json:"elements"`
	Reps            int       `json:"reps"`
	BytesPerElement Value     `json:"bytesPerElement"`
	Deltas          []float64 `json:"deltaBytes"`
}

// calibrateSet measures SetCalibration with n elements. Other work on the
// machine moves the same counters: the median of reps damps it, n should
// be large (tens of MB of elements).
func calibrateSet(n, reps int) (SetCalibration, error) {
	cal := SetCalibration{Elements: n, Reps: reps}
	name := fmt.Sprintf("%s%dx%d-setcal", nsPrefix, os.Getpid(), topoSeq.Add(1))
	if err := createNamed(name); err != nil {
		return cal, err
	}
	defer netns.DeleteNamed(name)
	c, done, err := nftConn(name)
	if err != nil {
		return cal, err
	}
	defer done()
	for range reps {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyNetdev, Name: "tperfcal"})
		s := &nftables.Set{Table: t, Name: "a4_cal", KeyType: authSetKey4, Concatenation: true, HasTimeout: true, Counter: true}
		if err := c.AddSet(s, nil); err != nil {
			return cal, err
		}
		if err := c.Flush(); err != nil {
			return cal, fmt.Errorf("perf: calibration set: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
		before, err := kernelMemory()
		if err != nil {
			return cal, err
		}
		const chunk = 1024
		els := make([]nftables.SetElement, 0, chunk)
		for i := 0; i < n; i += chunk {
			els = els[:0]
			for j := i; j < min(i+chunk, n); j++ {
				els = append(els, nftables.SetElement{Key: calKey(j), Timeout: 5 * time.Minute})
			}
			if err := c.SetAddElements(s, els); err != nil {
				return cal, err
			}
			if err := c.Flush(); err != nil {
				return cal, fmt.Errorf("perf: calibration elements: %w", err)
			}
		}
		after, err := kernelMemory()
		if err != nil {
			return cal, err
		}
		cal.Deltas = append(cal.Deltas, float64(after)-float64(before))
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return cal, fmt.Errorf("perf: calibration cleanup: %w", err)
		}
		time.Sleep(500 * time.Millisecond) // freed after an RCU grace period
	}
	cal.BytesPerElement = Value(Median(slices.Clone(cal.Deltas)) / float64(n))
	return cal, nil
}

// calKey is a distinct IPv4 authorized-set key for element i.
func calKey(i int) []byte {
	k := make([]byte, 20)
	copy(k, []byte{10, 201, 1, 2})
	binary.BigEndian.PutUint32(k[4:], 0xc6120000|uint32(i>>16))
	k[8] = 6
	binary.BigEndian.PutUint16(k[12:], uint16(i))
	binary.BigEndian.PutUint16(k[16:], 443)
	return k
}
