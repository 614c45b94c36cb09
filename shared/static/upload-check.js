/* Checks file fields before a form is sent, and shrinks large phone photos.
 *
 * A file field opts in with data-max-bytes (the server's per-file limit) and optionally
 * data-max-files (files per field); a form may carry data-max-total (the whole request).
 * Photos (JPEG/PNG) over the limit, or over SHRINK_ABOVE, are redrawn on a canvas at most
 * MAX_SIDE pixels on the long side and replaced with a JPEG. Files still too large get a
 * message beside the field and the form is not sent. Without this script the server still
 * checks everything (shared/cases/blobs.py); the page works the same, only later.
 */
(function () {
  "use strict";

  var SHRINK_ABOVE = 1.5 * 1024 * 1024;
  var MAX_SIDE = 2000;
  var QUALITY = 0.85;
  var MIB = 1024 * 1024;

  function sizeText(bytes) {
    if (bytes >= MIB) {
      return (Math.ceil(bytes * 10 / MIB) / 10).toFixed(1) + " MB";
    }
    return Math.max(1, Math.round(bytes / 1024)) + " KB";
  }

  function limitText(bytes) {
    return bytes >= MIB ? Math.floor(bytes / MIB) + " MB" : Math.max(1, Math.floor(bytes / 1024)) + " KB";
  }

  function isPhoto(file) {
    return file.type === "image/jpeg" || file.type === "image/png";
  }

  function note(input) {
    var id = (input.id || input.name) + "-upload-note";
    var box = document.getElementById(id);
    if (!box) {
      box = document.createElement("span");
      box.id = id;
      box.className = "upload-note";
      box.setAttribute("role", "status");
      input.insertAdjacentElement("afterend", box);
    }
    return box;
  }

  function say(input, errors, notes) {
    var box = note(input);
    box.textContent = errors.concat(notes).join(" ");
    box.className = errors.length ? "upload-note upload-error" : "upload-note";
    box.setAttribute("role", errors.length ? "alert" : "status");
    input.setCustomValidity(errors.join(" "));
  }

  /* The decoded photo. createImageBitmap needs no URL; the fallback reads a data: URL, as
     the Content-Security-Policy allows images from data: but not from blob:. */
  function loadImage(file) {
    if (typeof createImageBitmap === "function") {
      return createImageBitmap(file, {imageOrientation: "from-image"}).catch(function () {
        return readImage(file);
      });
    }
    return readImage(file);
  }

  function readImage(file) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onerror = function () { reject(new Error("read")); };
      reader.onload = function () {
        var img = new Image();
        img.onload = function () { resolve(img); };
        img.onerror = function () { reject(new Error("decode")); };
        img.src = reader.result;
      };
      reader.readAsDataURL(file);
    });
  }

  /* A smaller JPEG of the photo ``file``, or null when it cannot be drawn or is no smaller. */
  function shrink(file) {
    return loadImage(file).then(function (img) {
      var w = img.naturalWidth || img.width, h = img.naturalHeight || img.height;
      var scale = Math.min(1, MAX_SIDE / Math.max(w, h));
      var canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(w * scale));
      canvas.height = Math.max(1, Math.round(h * scale));
      var ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff";  // a PNG's transparent parts would turn black in a JPEG
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      if (img.close) { img.close(); }
      return new Promise(function (resolve) {
        canvas.toBlob(function (blob) {
          if (!blob || blob.size >= file.size) { resolve(null); return; }
          var name = file.name.replace(/\.[^.]*$/, "") + ".jpg";
          resolve(new File([blob], name, {type: "image/jpeg", lastModified: Date.now()}));
        }, "image/jpeg", QUALITY);
      });
    }).catch(function () { return null; });
  }

  function check(input) {
    var max = parseInt(input.dataset.maxBytes, 10);
    var maxFiles = parseInt(input.dataset.maxFiles || "0", 10);
    var files = Array.prototype.slice.call(input.files || []);
    var notes = [];
    var work = files.map(function (file) {
      if (!isPhoto(file) || (file.size <= max && file.size <= SHRINK_ABOVE)) {
        return Promise.resolve(file);
      }
      return shrink(file).then(function (small) {
        if (!small) { return file; }
        notes.push("照片“" + file.name + "”已压缩为 " + Math.max(1, Math.round(small.size / 1024)) + "KB。");
        return small;
      });
    });
    input.dataset.checking = "1";
    return Promise.all(work).then(function (result) {
      var changed = result.some(function (f, i) { return f !== files[i]; });
      if (changed && typeof DataTransfer === "function") {
        try {
          var dt = new DataTransfer();
          result.forEach(function (f) { dt.items.add(f); });
          input.files = dt.files;
        } catch (e) {
          result = files;  // this browser cannot replace the files: send them as chosen
          notes = [];
        }
      } else if (changed) {
        result = files;
        notes = [];
      }
      var errors = [];
      if (maxFiles && result.length > maxFiles) {
        errors.push("最多选择 " + maxFiles + " 个文件（现为 " + result.length + " 个）。");
      }
      result.forEach(function (f) {
        if (f.size > max) {
          errors.push("文件“" + f.name + "”过大：" + sizeText(f.size) + "，单个文件不能超过 " +
                      limitText(max) + "，请压缩或换一个文件。");
        }
      });
      say(input, errors, notes);
      delete input.dataset.checking;
      return errors.length === 0;
    });
  }

  function totalOf(form) {
    var total = 0;
    Array.prototype.forEach.call(form.querySelectorAll("input[type=file]"), function (input) {
      Array.prototype.forEach.call(input.files || [], function (f) { total += f.size; });
    });
    return total;
  }

  function init() {
    var inputs = document.querySelectorAll("input[type=file][data-max-bytes]");
    Array.prototype.forEach.call(inputs, function (input) {
      input.addEventListener("change", function () { check(input); });
      var form = input.form;
      if (!form || form.dataset.uploadCheck) { return; }
      form.dataset.uploadCheck = "1";
      form.addEventListener("submit", function (event) {
        var fields = form.querySelectorAll("input[type=file][data-max-bytes]");
        var busy = Array.prototype.some.call(fields, function (f) { return f.dataset.checking; });
        var bad = Array.prototype.filter.call(fields, function (f) { return f.validationMessage; });
        var maxTotal = parseInt(form.dataset.maxTotal || "0", 10);
        var total = totalOf(form);
        if (busy) {
          event.preventDefault();
          alert("正在压缩照片，请稍候再提交。");
        } else if (bad.length) {
          event.preventDefault();
          bad[0].focus();
        } else if (maxTotal && total > maxTotal) {
          event.preventDefault();
          alert("所选文件合计 " + sizeText(total) + "，一次提交不能超过 " + limitText(maxTotal) +
                "，请减少文件后再提交。");
        }
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
