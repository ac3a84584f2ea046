package processcri

import (
	"context"
	"errors"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri/imagemap"
)

// PullImage "pulls" a mapped image (at once); an unmapped image fails with a message
// that names the image map, which the kubelet shows as ErrImagePull.
func (r *Runtime) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref := req.GetImage().GetImage()
	img, err := r.opts.Images.Resolve(ref)
	if err != nil {
		if errors.Is(err, imagemap.ErrNotMapped) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, err
	}
	id, err := img.ID()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.pulled[ref] = img
	r.pulled[id] = img
	r.mu.Unlock()
	return &runtimeapi.PullImageResponse{ImageRef: id}, nil
}

// ImageStatus answers as a registry-backed runtime: the image when pulled, nothing
// when not.
func (r *Runtime) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	ref := req.GetImage().GetImage()
	r.mu.Lock()
	img, ok := r.pulled[ref]
	r.mu.Unlock()
	if !ok {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	im, err := r.image(img)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ImageStatusResponse{Image: im}, nil
}

// image is the CRI description of a map entry.
func (r *Runtime) image(img *imagemap.Image) (*runtimeapi.Image, error) {
	id, err := img.ID()
	if err != nil {
		return nil, err
	}
	im := &runtimeapi.Image{Id: id, Size: img.Size(), Spec: &runtimeapi.ImageSpec{Image: img.Image}}
	r.mu.Lock()
	for ref, e := range r.pulled {
		if e == img && ref != id {
			im.RepoTags = append(im.RepoTags, ref)
		}
	}
	r.mu.Unlock()
	if uid, _, err := img.UID(); err != nil {
		return nil, err
	} else if uid != nil {
		im.Uid = &runtimeapi.Int64Value{Value: *uid}
	}
	return im, nil
}

// ListImages lists the pulled images.
func (r *Runtime) ListImages(context.Context, *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	r.mu.Lock()
	seen := map[*imagemap.Image]bool{}
	var entries []*imagemap.Image
	for _, img := range r.pulled {
		if !seen[img] {
			seen[img] = true
			entries = append(entries, img)
		}
	}
	r.mu.Unlock()
	var out []*runtimeapi.Image
	for _, img := range entries {
		im, err := r.image(img)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return &runtimeapi.ListImagesResponse{Images: out}, nil
}

// RemoveImage forgets a pulled image (the next pull brings it back).
func (r *Runtime) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	ref := req.GetImage().GetImage()
	r.mu.Lock()
	defer r.mu.Unlock()
	img, ok := r.pulled[ref]
	if !ok {
		return &runtimeapi.RemoveImageResponse{}, nil
	}
	for k, e := range r.pulled {
		if e == img {
			delete(r.pulled, k)
		}
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// ImageFsInfo reports the filesystem of the runtime's state folder, for the kubelet's
// image garbage collection.
func (r *Runtime) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(r.opts.StateDir, &st); err != nil {
		return nil, err
	}
	used := (st.Blocks - st.Bfree) * uint64(st.Bsize) //nolint:gosec // block size is positive
	fs := &runtimeapi.FilesystemUsage{
		Timestamp: time.Now().UnixNano(), FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: r.opts.StateDir},
		UsedBytes: &runtimeapi.UInt64Value{Value: used}, InodesUsed: &runtimeapi.UInt64Value{Value: st.Files - st.Ffree},
	}
	return &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{fs}, ContainerFilesystems: []*runtimeapi.FilesystemUsage{fs}}, nil
}
