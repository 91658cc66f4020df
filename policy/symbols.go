package policy

// hash64 is the splitmix64 finalizer: index keys are pairs of small
// integers, which weaker mixes cluster badly in linear probing.
func hash64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 27
	x *= 0x94D049BB133111EB
	x ^= x >> 31
	return x
}

// noCopy makes go vet refuse copies of the structures that hold symbols
// (identity.Hold) through their own address.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}
