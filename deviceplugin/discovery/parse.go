package discovery

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is a kernel driver version such as 0.9.8.
type Version struct {
	Major, Minor, Patch int
}

// String formats the version as MAJOR.MINOR.PATCH.
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor < o.Minor
	}
	return v.Patch < o.Patch
}

// ParseVersion reads a driver version in any of the forms the rknpu driver prints:
// "0.9.8" (/sys/module/rknpu/version), "v0.9.8", or "RKNPU driver: v0.9.8" (debugfs
// version). A missing patch number counts as 0.
func ParseVersion(s string) (Version, error) {
	text := strings.TrimSpace(s)
	if i := strings.LastIndex(text, ":"); i >= 0 {
		text = strings.TrimSpace(text[i+1:])
	}
	text = strings.TrimPrefix(strings.TrimPrefix(text, "v"), "V")
	parts := strings.Split(text, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return Version{}, fmt.Errorf("version %q is not of the form MAJOR.MINOR[.PATCH]", s)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return Version{}, fmt.Errorf("version %q is not of the form MAJOR.MINOR[.PATCH]: %q is not a number", s, p)
		}
		nums[i] = n
	}
	return Version{Major: nums[0], Minor: nums[1], Patch: nums[2]}, nil
}

var (
	// The driver prints each core's busy share 2 wide, so 100% reads "Core0:100%," with
	// no space after the colon.
	coreLoadPattern   = regexp.MustCompile(`Core(\d+):\s*(\d+)%`)
	singleLoadPattern = regexp.MustCompile(`^NPU load:\s*(\d+)%`)
)

// maxCores bounds the core index accepted from a load file, so a corrupt file cannot make
// the parser allocate a huge slice.
const maxCores = 16

// ParseLoad reads the rknpu load file (debugfs "load" or /proc/rknpu/load) and returns
// the busy percentage of each core, indexed by core number. Multi-core chips print
// "NPU load:  Core0:  0%, Core1: 12%, Core2:100%,"; single-core chips "NPU load:  7%".
func ParseLoad(s string) ([]int, error) {
	text := strings.TrimSpace(s)
	matches := coreLoadPattern.FindAllStringSubmatch(text, -1)
	if len(matches) == 0 {
		m := singleLoadPattern.FindStringSubmatch(text)
		if m == nil {
			return nil, fmt.Errorf("load %q has neither \"CoreN: P%%\" entries nor a single \"NPU load: P%%\"", s)
		}
		p, err := percent(m[1])
		if err != nil {
			return nil, err
		}
		return []int{p}, nil
	}
	loads := make(map[int]int, len(matches))
	highest := -1
	for _, m := range matches {
		core, err := strconv.Atoi(m[1])
		if err != nil || core >= maxCores {
			return nil, fmt.Errorf("load %q names core %s; at most %d cores are expected", s, m[1], maxCores)
		}
		if _, dup := loads[core]; dup {
			return nil, fmt.Errorf("load %q lists core %d twice", s, core)
		}
		p, err := percent(m[2])
		if err != nil {
			return nil, err
		}
		loads[core] = p
		highest = max(highest, core)
	}
	out := make([]int, highest+1)
	for core := range out {
		p, ok := loads[core]
		if !ok {
			return nil, fmt.Errorf("load %q skips core %d", s, core)
		}
		out[core] = p
	}
	return out, nil
}

func percent(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p > 100 {
		return 0, fmt.Errorf("load value %q%% is not a percentage", s)
	}
	return p, nil
}

// errNoCompatible is returned by parseCompatible for an empty device-tree entry.
var errNoCompatible = errors.New("the compatible list is empty")

// parseCompatible splits a device-tree compatible property (NUL-terminated strings).
func parseCompatible(data []byte) ([]string, error) {
	var out []string
	for _, s := range strings.Split(string(data), "\x00") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errNoCompatible
	}
	return out, nil
}
