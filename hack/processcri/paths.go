package processcri

import (
	"fmt"
	"path/filepath"
	"strings"
)

// PathMap makes a host path prefix stand for a local folder on the simulated node: the
// kubelet's mounts and device nodes under Host come from Local instead.
type PathMap struct {
	Host, Local string
}

// ParsePathMap parses HOST=LOCAL (both absolute).
func ParsePathMap(s string) (PathMap, error) {
	host, local, ok := strings.Cut(s, "=")
	if !ok || !filepath.IsAbs(host) || !filepath.IsAbs(local) {
		return PathMap{}, fmt.Errorf("node path %q: want HOST=LOCAL with two absolute paths", s)
	}
	return PathMap{Host: filepath.Clean(host), Local: filepath.Clean(local)}, nil
}

// nodePath is where the simulated node keeps host path p: the longest matching
// PathMap's folder, else p itself.
func nodePath(maps []PathMap, p string) string {
	var best *PathMap
	for i := range maps {
		m := &maps[i]
		if p != m.Host && !strings.HasPrefix(p, m.Host+"/") && m.Host != "/" {
			continue
		}
		if best == nil || len(m.Host) > len(best.Host) {
			best = m
		}
	}
	if best == nil {
		return p
	}
	return filepath.Join(best.Local, strings.TrimPrefix(p, best.Host))
}
