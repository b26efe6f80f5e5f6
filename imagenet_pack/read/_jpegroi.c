/* Region-of-interest JPEG decoding with libjpeg-turbo: decode only the rows and columns a crop needs.
 *
 * decode_region(data, top, left, height, width, denom, flip=False) -> bytearray of height*width*3 RGB bytes
 *
 * The box is in the coordinates of the image scaled by 1/denom (libjpeg DCT scaling, denom in 1, 2, 4, 8).
 * Rows above the box are entropy-decoded and dropped (jpeg_skip_scanlines: no IDCT, no colour conversion),
 * columns outside it are never transformed (jpeg_crop_scanline), rows below it are never read. The pixels
 * are those of a full decode at the same scale (same IDCT, same fancy upsampling), cut to the box, mirrored
 * left-right when ``flip`` is true.
 *
 * Optional: built when libjpeg-turbo's headers are present (setup.py marks it optional); without it the
 * decoders fall back to OpenCV. The GIL is released while libjpeg runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#error "needs libjpeg-turbo 2.0 or newer (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

static PyObject *RoiError;     /* the bytes are not a decodable JPEG */
static PyObject *Unsupported;  /* a valid JPEG this decoder does not handle (CMYK/YCCK): use OpenCV */

struct error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_mgr *err = (struct error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

/* Data that ends early is an error, as in OpenCV's decoder (the reference); other warnings (corrupt-data
 * recovery) are ignored, as OpenCV ignores them. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_error(cinfo);
}

enum { OK = 0, FAILED = 1, UNSUPPORTED = 2, OUTSIDE = 3 };

struct job {
    const unsigned char *data;
    unsigned long size;
    unsigned int top, left, height, width, denom;
    int flip;                           /* mirror left-right while copying out */
    unsigned char *out;                 /* height * width * 3 bytes */
    unsigned int image_height, image_width;  /* scaled image size, for the OUTSIDE message */
    char message[JMSG_LENGTH_MAX];
};

/* Runs without the GIL: touches no Python object. */
static int run(struct job *job) {
    struct jpeg_decompress_struct cinfo;
    struct error_mgr err;
    unsigned char *volatile rows = NULL;
    volatile int status = OK;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message[0] = '\0';
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(rows);
        memcpy(job->message, err.message, sizeof(job->message));
        return FAILED;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, job->data, job->size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        status = UNSUPPORTED;
        goto done;
    }
    cinfo.out_color_space = JCS_EXT_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = job->denom;
    cinfo.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&cinfo);
    job->image_height = cinfo.output_height;
    job->image_width = cinfo.output_width;
    if (job->top + job->height > cinfo.output_height || job->left + job->width > cinfo.output_width) {
        status = OUTSIDE;
        goto done;
    }

    /* One spare column each side: libjpeg's fancy upsampling treats the edges of a cropped scanline as the
     * image edge, so the box's own edge pixels must not be the cropped region's edges. */
    JDIMENSION xoffset = job->left > 0 ? job->left - 1 : 0;
    JDIMENSION crop_width = job->left + job->width + 1 - xoffset;
    if (xoffset + crop_width > cinfo.output_width) crop_width = cinfo.output_width - xoffset;
    if (crop_width < cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoffset, &crop_width);  /* widened to iMCU boundaries */
    const size_t shift = (size_t)(job->left - xoffset) * 3, row_bytes = (size_t)job->width * 3;
    const size_t stride = (size_t)cinfo.output_width * 3;  /* output_width is now the cropped width */
    const unsigned int batch = cinfo.rec_outbuf_height > 0 ? cinfo.rec_outbuf_height : 1;
    rows = malloc(stride * batch);
    if (rows == NULL) {
        snprintf(job->message, sizeof(job->message), "out of memory");
        status = FAILED;
        goto done;
    }
    JSAMPROW pointers[16];
    for (unsigned int i = 0; i < batch && i < 16; i++) pointers[i] = rows + i * stride;

    unsigned int skipped = 0;
    while (skipped < job->top) {
        JDIMENSION n = jpeg_skip_scanlines(&cinfo, job->top - skipped);
        if (n == 0) break;
        skipped += n;
    }
    unsigned int written = 0;
    while (written < job->height) {
        unsigned int want = job->height - written;
        if (want > batch) want = batch;
        JDIMENSION got = jpeg_read_scanlines(&cinfo, pointers, want);
        if (got == 0) break;
        for (JDIMENSION i = 0; i < got; i++) {
            unsigned char *dst = job->out + (size_t)(written + i) * row_bytes;
            const unsigned char *src = pointers[i] + shift;
            if (!job->flip) {
                memcpy(dst, src, row_bytes);
                continue;
            }
            for (size_t x = 0, last = job->width - 1; x <= last; x++) {
                unsigned char *d = dst + (last - x) * 3;
                d[0] = src[3 * x];
                d[1] = src[3 * x + 1];
                d[2] = src[3 * x + 2];
            }
        }
        written += got;
    }
    if (skipped < job->top || written < job->height) {
        snprintf(job->message, sizeof(job->message), "image data ends early");
        status = FAILED;
    }
done:
    jpeg_destroy_decompress(&cinfo);  /* aborts: rows below the box are never decoded */
    free(rows);
    return status;
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer data;
    int top, left, height, width, denom, flip = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iiiii|p:decode_region", &data, &top, &left, &height, &width, &denom, &flip))
        return NULL;
    if (!(denom == 1 || denom == 2 || denom == 4 || denom == 8) || top < 0 || left < 0 || height < 1 || width < 1) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "bad box (top=%d, left=%d, height=%d, width=%d) or denom %d", top, left,
                     height, width, denom);
        return NULL;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)height * width * 3);
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    struct job job = {data.buf, (unsigned long)data.len, top, left, height, width, denom, flip,
                      (unsigned char *)PyByteArray_AS_STRING(out), 0, 0, ""};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&job);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (status == OK) return out;
    Py_DECREF(out);
    if (status == UNSUPPORTED)
        PyErr_SetString(Unsupported, "CMYK/YCCK JPEG");
    else if (status == OUTSIDE)
        PyErr_Format(PyExc_ValueError, "box (top=%d, left=%d, height=%d, width=%d) outside the %ux%u image at 1/%d",
                     top, left, height, width, job.image_height, job.image_width, denom);
    else
        PyErr_Format(RoiError, "%s", job.message);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, top, left, height, width, denom, flip=False) -> bytearray: RGB bytes of the box "
     "(coordinates at 1/denom scale, mirrored if flip), decoding only what the box needs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegroi",
                                    "Region-of-interest JPEG decoding with libjpeg-turbo.", -1, methods};

PyMODINIT_FUNC PyInit__jpegroi(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    RoiError = PyErr_NewException("imagenet_pack.read._jpegroi.Error", NULL, NULL);
    Unsupported = PyErr_NewException("imagenet_pack.read._jpegroi.Unsupported", NULL, NULL);
    if (RoiError == NULL || Unsupported == NULL || PyModule_AddObjectRef(m, "Error", RoiError) < 0 ||
        PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION", LIBJPEG_TURBO_VERSION_NUMBER);
    return m;
}
